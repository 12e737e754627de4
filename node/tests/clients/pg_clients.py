"""Drives a Quiver server with psycopg 3; exits non-zero on any mismatch.

Usage: python3 pg_clients.py HOST PORT
"""
import datetime
import decimal
import sys

import psycopg

host, port = sys.argv[1], int(sys.argv[2])
with psycopg.connect(host=host, port=port, user="quiver", dbname="quiver", autocommit=True) as conn:
    conn.execute("CREATE TABLE psy (id BIGINT NOT NULL, name TEXT, price DECIMAL(10, 2), day DATE, ok BOOLEAN)")
    conn.execute(
        "INSERT INTO psy VALUES (%s, %s, %s, %s, %s)",
        (1, "one", decimal.Decimal("1.50"), datetime.date(2024, 2, 29), True),
    )
    with conn.cursor() as cur:
        with cur.copy("COPY psy FROM STDIN WITH (FORMAT csv)") as copy:
            copy.write("2,two,2.25,2024-03-01,false\n3,three,,2024-03-02,\n")
    rows = conn.execute("SELECT id, name, price, day, ok FROM psy ORDER BY id").fetchall()
    assert rows[0] == (1, "one", decimal.Decimal("1.50"), datetime.date(2024, 2, 29), True), rows
    assert rows[2][2] is None and rows[2][4] is None, rows
    rows = conn.execute("SELECT name FROM psy WHERE id > %s AND ok = %s", (1, False), binary=True).fetchall()
    assert rows == [("two",)], rows
    try:
        conn.execute("SELECT * FROM nowhere")
        raise AssertionError("querying an unknown table must fail")
    except psycopg.errors.UndefinedTable as e:
        assert "nowhere" in str(e), e
    assert conn.execute("SELECT count(*) FROM psy").fetchone() == (3,)
print("pg clients OK")
