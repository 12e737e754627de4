"""Logs in to a Quiver server with authentication and TLS on, with unmodified clients: psycopg 3 (SCRAM-SHA-256,
sslmode=verify-full), the ADBC Flight SQL driver (username/password options, grpc+tls) and pyarrow.flight (basic
token, grpc+tls); checks that wrong passwords, missing credentials and plaintext are refused. Exits non-zero on any
mismatch.

Usage: python3 secured_clients.py FLIGHT_PORT PG_PORT CA_FILE USER PASSWORD
"""
import sys
import warnings

import adbc_driver_flightsql.dbapi as flightsql
import psycopg
import pyarrow.flight as fl

warnings.simplefilter("ignore")
flight_port, pg_port, ca_file, user, password = sys.argv[1:6]
with open(ca_file, "rb") as f:
    ca = f.read()


def refused(what, run, says):
    try:
        run()
    except Exception as e:  # noqa: BLE001 - each client raises its own error type
        assert says in str(e).lower(), f"{what}: {e}"
        return
    raise AssertionError(f"{what} was not refused")


# psycopg 3: SCRAM-SHA-256 over TLS, the server's certificate checked against the CA and its name.
pg = dict(host="localhost", port=pg_port, dbname="quiver", sslrootcert=ca_file)
with psycopg.connect(user=user, password=password, sslmode="verify-full", **pg) as conn:
    assert conn.pgconn.ssl_in_use, "the connection speaks TLS"
    conn.execute("CREATE TABLE secured_t (id BIGINT NOT NULL, name TEXT)")
    conn.execute("INSERT INTO secured_t VALUES (1, 'a'), (2, 'b')")
    assert conn.execute("SELECT count(*) FROM secured_t").fetchone() == (2,)
with psycopg.connect(user=user, password=password, sslmode="require", **pg) as conn:
    assert conn.execute("SELECT 6 * 7").fetchone() == (42,)
refused(
    "psycopg with a wrong password",
    lambda: psycopg.connect(user=user, password="wrong", sslmode="verify-full", **pg),
    "password authentication failed",
)
refused("psycopg without TLS", lambda: psycopg.connect(user=user, password=password, sslmode="disable", **pg), "tls")

# ADBC: the standard username/password options and grpc+tls.
uri = f"grpc+tls://localhost:{flight_port}"
tls_roots = {"adbc.flight.sql.client_option.tls_root_certs": ca.decode()}
conn = flightsql.connect(uri, db_kwargs={"username": user, "password": password, **tls_roots})
cur = conn.cursor()
cur.execute("SELECT id, name FROM secured_t ORDER BY id")
assert cur.fetchall() == [(1, "a"), (2, "b")]
cur.close()
conn.close()


def adbc_query(username, pw):
    conn = flightsql.connect(uri, db_kwargs={"username": username, "password": pw, **tls_roots})
    try:
        cur = conn.cursor()
        cur.execute("SELECT 1")
        cur.fetchall()
    finally:
        conn.close()


refused("ADBC with a wrong password", lambda: adbc_query(user, "wrong"), "password authentication failed")


# pyarrow.flight: basic credentials for a bearer token, then a Flight SQL query (its command encoded by hand).
def varint(n):
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number, data):
    return bytes([number << 3 | 2]) + varint(len(data)) + data


def statement(sql):
    query = field(1, sql.encode())
    return field(1, b"type.googleapis.com/arrow.flight.protocol.sql.CommandStatementQuery") + field(2, query)


client = fl.FlightClient(uri, tls_root_certs=ca)
header = client.authenticate_basic_token(user.encode(), password.encode())
options = fl.FlightCallOptions(headers=[header])
descriptor = fl.FlightDescriptor.for_command(statement("SELECT count(*) AS n FROM secured_t"))
info = client.get_flight_info(descriptor, options)
table = client.do_get(info.endpoints[0].ticket, options).read_all()
assert table.column(0).to_pylist() == [2], table
refused("pyarrow without a token", lambda: client.get_flight_info(descriptor), "unauthenticated")
refused(
    "pyarrow with a wrong password",
    lambda: client.authenticate_basic_token(user.encode(), b"wrong"),
    "password authentication failed",
)
print("secured clients OK")
