"""Drives a Quiver server with the ADBC Flight SQL driver and pyarrow.flight; exits non-zero on any mismatch.

Usage: python3 flight_clients.py HOST:PORT
"""
import sys
import warnings

import adbc_driver_flightsql.dbapi as flightsql
import pyarrow as pa
import pyarrow.flight as fl

warnings.simplefilter("ignore")
addr = sys.argv[1]

conn = flightsql.connect(f"grpc://{addr}")
cur = conn.cursor()
cur.execute("CREATE TABLE adbc_t (id BIGINT NOT NULL, name TEXT, score DOUBLE)")
cur.execute("INSERT INTO adbc_t VALUES (1, 'a', 1.5), (2, 'b', 2.5)")
cur.execute("SELECT sum(score) AS s, count(*) AS n FROM adbc_t")
table = cur.fetch_arrow_table()
assert table.column("s").to_pylist() == [4.0], table
assert table.column("n").to_pylist() == [2], table

cur.execute("SELECT name FROM adbc_t WHERE id = ?", parameters=(2,))
assert cur.fetchall() == [("b",)]

ingest = pa.table({"id": pa.array([10, 11], pa.int64()), "name": ["x", "y"], "score": [0.25, 0.5]})
assert cur.adbc_ingest("adbc_t", ingest, mode="append") == 2
cur.execute("SELECT count(*) FROM adbc_t")
assert cur.fetchone() == (4,)

names = [
    t["table_name"]
    for c in conn.adbc_get_objects(depth="tables").read_all().to_pylist()
    for s in c["catalog_db_schemas"]
    for t in s["db_schema_tables"]
]
assert "adbc_t" in names, names
schema = conn.adbc_get_table_schema("adbc_t")
assert schema.field("id").type == pa.int64() and not schema.field("id").nullable, schema

try:
    cur.execute("SELECT * FROM nowhere")
    raise AssertionError("querying an unknown table must fail")
except flightsql.ProgrammingError as e:
    assert "nowhere" in str(e), e
cur.close()
conn.close()

client = fl.FlightClient(f"grpc://{addr}")
actions = [a.type for a in client.list_actions()]
assert "CreatePreparedStatement" in actions, actions
print("flight clients OK")
