//! Users, roles and privileges with authentication on: a real server on loopback ports, driven by tokio-postgres
//! (SCRAM-SHA-256) and arrow-flight's Flight SQL client (handshake with basic credentials, then a bearer token).

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::DataType;
use arrow_flight::error::FlightError;
use arrow_flight::sql::CommandGetTables;
use arrow_flight::sql::client::FlightSqlServiceClient;
use futures::TryStreamExt;
use quiver_node::config::{Config, Overrides};
use quiver_node::server::Server;
use tonic::Code;
use tonic::transport::Channel;

const ADMIN_PASSWORD: &str = "correct horse battery staple";

/// A server with authentication on and an initial administrator, on loopback ports.
struct Secured {
    flight: std::net::SocketAddr,
    pg: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    running: tokio::task::JoinHandle<quiver_node::Result<()>>,
    dir: tempfile::TempDir,
}

impl Secured {
    async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Starts with more settings from the environment (`QUIVER_…` variables).
    async fn start_with(settings: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let overrides = Overrides { init_admin: Some("admin".into()), ..Overrides::loopback(dir.path().to_path_buf()) };
        let mut env = vec![("QUIVER_AUTH__ADMIN_PASSWORD".to_string(), ADMIN_PASSWORD.to_string())];
        env.extend(settings.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let server = Server::bind(Config::load(None, env, &overrides).expect("config")).await.expect("bind");
        let (flight, pg) = (server.flight_addr(), server.pg_addr());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        Self { flight, pg, stop, running, dir }
    }

    async fn pg(&self, user: &str, password: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let mut config = tokio_postgres::Config::new();
        config.host(self.pg.ip().to_string()).port(self.pg.port()).user(user).password(password).dbname("quiver");
        // The server may still be readying its principals when the first client arrives.
        let mut tries = 0;
        loop {
            match config.connect(tokio_postgres::NoTls).await {
                Ok((client, connection)) => {
                    tokio::spawn(connection);
                    return Ok(client);
                }
                Err(e) if e.code().is_none() && tries < 50 => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn flight(&self) -> FlightSqlServiceClient<Channel> {
        let channel =
            Channel::from_shared(format!("http://{}", self.flight)).expect("uri").connect().await.expect("connect");
        FlightSqlServiceClient::new(channel)
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.running.await.expect("join").expect("clean shutdown");
    }
}

fn message(e: &tokio_postgres::Error) -> String {
    e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| e.to_string())
}

fn code(e: &tokio_postgres::Error) -> String {
    e.code().map(|c| c.code().to_string()).unwrap_or_else(|| format!("no SQLSTATE: {e}"))
}

/// The first column of `sql`'s rows, as text.
async fn names(client: &tokio_postgres::Client, sql: &str) -> Vec<String> {
    client.query(sql, &[]).await.expect(sql).iter().map(|r| r.get::<_, String>(0)).collect()
}

async fn count(client: &tokio_postgres::Client, sql: &str) -> Result<i64, tokio_postgres::Error> {
    client.query_one(sql, &[]).await.map(|row| row.get::<_, i64>(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_clients_log_in_with_scram_and_need_privileges() {
    let server = Secured::start().await;
    let wrong = server.pg("admin", "not the password").await.expect_err("a wrong password is refused");
    assert_eq!(code(&wrong), "28P01", "{wrong}");
    let nobody = server.pg("nobody", "x").await.expect_err("an unknown user is refused");
    assert_eq!(code(&nobody), "28P01", "{nobody}");
    assert!(message(&nobody).contains("password authentication failed"), "{nobody:?}");

    let admin = server.pg("admin", ADMIN_PASSWORD).await.expect("the administrator logs in");
    admin.batch_execute("CREATE TABLE t (id BIGINT PRIMARY KEY, v TEXT)").await.expect("create");
    admin.batch_execute("INSERT INTO t VALUES (1, 'a'), (2, 'b')").await.expect("insert");
    admin.batch_execute("CREATE TABLE secret (x BIGINT)").await.expect("create");
    admin.batch_execute("CREATE USER alice WITH PASSWORD 'alice''s pw'").await.expect("create user");
    admin.batch_execute("CREATE ROLE readers").await.expect("create role");

    let alice = server.pg("alice", "alice's pw").await.expect("alice logs in");
    let denied = count(&alice, "SELECT count(*) FROM t").await.expect_err("no grant yet");
    assert_eq!(code(&denied), "42501", "{denied}");
    assert!(message(&denied).contains("lacks SELECT on table \"t\""), "{denied:?}");

    admin.batch_execute("GRANT SELECT ON ALL TABLES TO readers").await.expect("grant to role");
    admin.batch_execute("GRANT readers TO alice").await.expect("grant role");
    assert_eq!(count(&alice, "SELECT count(*) FROM t").await.expect("select through the role"), 2);
    let insert = alice.batch_execute("INSERT INTO t VALUES (3, 'c')").await.expect_err("no INSERT");
    assert_eq!(code(&insert), "42501", "{insert}");
    admin.batch_execute("GRANT INSERT ON TABLE t TO alice").await.expect("grant insert");
    alice.batch_execute("INSERT INTO t VALUES (3, 'c')").await.expect("insert with the grant");
    let other = alice.batch_execute("INSERT INTO secret VALUES (1)").await.expect_err("insert on another table");
    assert_eq!(code(&other), "42501", "{other}");
    let update = alice.batch_execute("UPDATE t SET v = 'x' WHERE id = 1").await.expect_err("no UPDATE");
    assert_eq!(code(&update), "42501", "{update}");
    // A DELETE needs DELETE, and SELECT as well when its condition reads the rows (as in PostgreSQL).
    admin.batch_execute("CREATE USER deleter PASSWORD 'd'").await.expect("user");
    admin.batch_execute("GRANT DELETE ON t TO deleter").await.expect("grant delete");
    let deleter = server.pg("deleter", "d").await.expect("deleter logs in");
    // The catalog's listings show a user only the tables it holds a privilege on (psql's \dt reads pg_class),
    // in the simple and the extended protocol; the superuser sees all.
    for sql in [
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
        "SELECT DISTINCT table_name FROM information_schema.columns WHERE table_schema = 'public' ORDER BY 1",
        "SELECT tablename FROM pg_catalog.pg_tables WHERE schemaname = 'public' ORDER BY 1",
        "SELECT relname FROM pg_catalog.pg_class WHERE relname IN ('t', 'secret') ORDER BY 1",
    ] {
        assert_eq!(names(&deleter, sql).await, ["t"], "{sql}");
        assert_eq!(names(&admin, sql).await, ["secret", "t"], "{sql}");
        let simple = deleter.simple_query(sql).await.expect(sql);
        let rows: Vec<_> = simple
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .collect();
        assert_eq!(rows, ["t"], "{sql}");
    }
    // pg_attribute lists columns by the table's oid: a hidden table's columns are hidden too (t has id and v,
    // secret has x).
    let columns = "SELECT DISTINCT attname FROM pg_catalog.pg_attribute WHERE attname IN ('v', 'x') ORDER BY 1";
    assert_eq!(names(&deleter, columns).await, ["v"]);
    assert_eq!(names(&admin, columns).await, ["v", "x"]);
    // An UPDATE needs SELECT as well when a SET reads the rows it rewrites.
    admin.batch_execute("CREATE TABLE u (id BIGINT PRIMARY KEY, v TEXT)").await.expect("create");
    admin.batch_execute("INSERT INTO u VALUES (1, 'a')").await.expect("insert");
    admin.batch_execute("GRANT UPDATE ON u TO deleter").await.expect("grant update");
    let sets = deleter.batch_execute("UPDATE u SET v = v || '!'").await.expect_err("SET reads rows");
    assert!(message(&sets).contains("lacks SELECT on table \"u\""), "{sets:?}");
    let copies = deleter.batch_execute("UPDATE u SET v = CAST(id AS TEXT)").await.expect_err("SET reads id");
    assert_eq!(code(&copies), "42501", "{copies}");
    deleter.batch_execute("UPDATE u SET v = 'same'").await.expect("a constant SET reads nothing");
    assert_eq!(names(&admin, "SELECT v FROM u").await, ["same"]);
    admin.batch_execute("DROP TABLE u").await.expect("drop");
    let reads = deleter.batch_execute("DELETE FROM t WHERE v = 'zzz'").await.expect_err("WHERE reads rows");
    assert!(message(&reads).contains("lacks SELECT on table \"t\""), "{reads:?}");
    admin.batch_execute("GRANT SELECT ON t TO deleter").await.expect("grant select");
    deleter.batch_execute("DELETE FROM t WHERE v = 'zzz'").await.expect("delete with both");
    admin.batch_execute("DROP USER deleter").await.expect("drop");

    // The extended protocol (a prepared statement) is checked too.
    let prepared = alice.query("SELECT v FROM t WHERE id = $1", &[&1i64]).await.expect("prepared select");
    assert_eq!(prepared[0].get::<_, String>(0), "a");

    // Only a superuser defines tables, changes principals, or reads the system schema.
    for sql in [
        "CREATE TABLE mine (x BIGINT)",
        "DROP TABLE t",
        "CREATE USER mallory PASSWORD 'x'",
        "GRANT ALL ON ALL TABLES TO alice",
        "SELECT * FROM system.users",
    ] {
        let e = alice.batch_execute(sql).await.expect_err(sql);
        assert_eq!(code(&e), "42501", "{sql}: {e}");
    }

    let users = admin
        .query("SELECT name, login, superuser, has_password, member_of FROM system.users ORDER BY name", &[])
        .await
        .expect("users");
    let shown: Vec<(String, bool, bool, bool, String)> =
        users.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))).collect();
    assert_eq!(
        shown,
        vec![
            ("admin".into(), true, true, true, String::new()),
            ("alice".into(), true, false, true, "readers".into()),
            ("readers".into(), false, false, false, String::new()),
        ]
    );
    let grants = admin
        .query("SELECT grantee, object, privilege FROM system.grants ORDER BY 1, 2, 3", &[])
        .await
        .expect("grants");
    let shown: Vec<(String, String, String)> = grants.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    assert_eq!(
        shown,
        vec![
            ("alice".into(), "TABLE t".into(), "INSERT".into()),
            ("readers".into(), "ALL TABLES".into(), "SELECT".into()),
        ]
    );

    // A revoke takes effect on the next statement of a session already open.
    admin.batch_execute("REVOKE readers FROM alice").await.expect("revoke role");
    let revoked = count(&alice, "SELECT count(*) FROM t").await.expect_err("revoked");
    assert_eq!(code(&revoked), "42501", "{revoked}");
    // Grants on a dropped table go with it.
    admin.batch_execute("DROP TABLE t").await.expect("drop");
    let grants = admin.query("SELECT grantee FROM system.grants WHERE object = 'TABLE t'", &[]).await.expect("grants");
    assert!(grants.is_empty());
    let missing = admin.batch_execute("GRANT SELECT ON TABLE nope TO alice").await.expect_err("unknown table");
    assert_eq!(code(&missing), "42P01", "{missing}");
    let unknown = admin.batch_execute("GRANT SELECT ON ALL TABLES TO nobody").await.expect_err("unknown role");
    assert_eq!(code(&unknown), "42704", "{unknown}");

    // A password change applies to the next login; a dropped user cannot log in.
    admin.batch_execute("ALTER USER alice WITH PASSWORD 'new'").await.expect("alter");
    assert_eq!(code(&server.pg("alice", "alice's pw").await.expect_err("old password")), "28P01");
    drop(server.pg("alice", "new").await.expect("new password"));
    admin.batch_execute("DROP USER alice").await.expect("drop user");
    assert_eq!(code(&server.pg("alice", "new").await.expect_err("dropped")), "28P01");
    server.stop().await;
}

fn status(e: FlightError) -> tonic::Status {
    match e {
        FlightError::Tonic(status) => *status,
        FlightError::Arrow(arrow::error::ArrowError::IpcError(message)) if message.contains("Unauthenticated") => {
            tonic::Status::unauthenticated(message)
        }
        other => panic!("expected a gRPC status, got {other}"),
    }
}

async fn query(client: &mut FlightSqlServiceClient<Channel>, sql: &str) -> Result<Vec<RecordBatch>, FlightError> {
    let info = client.execute(sql.to_string(), None).await?;
    let mut batches = Vec::new();
    for endpoint in info.endpoint {
        let stream = client.do_get(endpoint.ticket.expect("ticket")).await?;
        batches.extend(stream.try_collect::<Vec<_>>().await?);
    }
    Ok(batches)
}

async fn table_names(client: &mut FlightSqlServiceClient<Channel>) -> Vec<String> {
    let command = CommandGetTables { include_schema: false, ..Default::default() };
    let info = client.get_tables(command).await.expect("get tables");
    let mut names = Vec::new();
    for endpoint in info.endpoint {
        let stream = client.do_get(endpoint.ticket.expect("ticket")).await.expect("do_get");
        for batch in stream.try_collect::<Vec<_>>().await.expect("batches") {
            let column = arrow::compute::cast(batch.column_by_name("table_name").expect("column"), &DataType::Utf8)
                .expect("text");
            names.extend(column.as_string::<i32>().iter().flatten().map(str::to_string));
        }
    }
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flight_clients_trade_basic_credentials_for_a_bearer_token() {
    let server = Secured::start().await;
    // Wait until the server has readied its principals (the first login may race them).
    drop(server.pg("admin", ADMIN_PASSWORD).await.expect("admin"));

    let mut anonymous = server.flight().await;
    let e = status(query(&mut anonymous, "SELECT 1").await.expect_err("no token"));
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");
    let e = anonymous.handshake("admin", "wrong").await.expect_err("wrong password");
    assert!(e.to_string().contains("password authentication failed"), "{e}");

    let mut admin = server.flight().await;
    let token = admin.handshake("admin", ADMIN_PASSWORD).await.expect("handshake");
    assert!(!token.is_empty(), "the token is also the handshake's payload");
    admin.execute_update("CREATE TABLE a (x BIGINT)".into(), None).await.expect("create a");
    admin.execute_update("CREATE TABLE b (x BIGINT)".into(), None).await.expect("create b");
    admin.execute_update("INSERT INTO a VALUES (1), (2), (3)".into(), None).await.expect("insert");
    admin.execute_update("CREATE USER bob PASSWORD 'bob'".into(), None).await.expect("create user over flight");
    admin.execute_update("GRANT SELECT ON a TO bob".into(), None).await.expect("grant");
    assert_eq!(table_names(&mut admin).await, vec!["a".to_string(), "b".to_string()]);

    let mut bob = server.flight().await;
    bob.handshake("bob", "bob").await.expect("bob's handshake");
    let rows: usize = query(&mut bob, "SELECT x FROM a").await.expect("select").iter().map(RecordBatch::num_rows).sum();
    assert_eq!(rows, 3);
    let e = status(query(&mut bob, "SELECT x FROM b").await.expect_err("no grant on b"));
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    assert_eq!(table_names(&mut bob).await, vec!["a".to_string()], "bob lists only what he may see");

    // Another client presenting a forged or altered token is refused.
    let mut forger = server.flight().await;
    forger.set_token(format!("{}x", String::from_utf8_lossy(&token)));
    let e = status(query(&mut forger, "SELECT 1").await.expect_err("forged"));
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");

    // Dropping the user revokes its token.
    admin.execute_update("DROP USER bob".into(), None).await.expect("drop bob");
    let e = status(query(&mut bob, "SELECT x FROM a").await.expect_err("revoked"));
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");
    assert!(e.message().contains("revoked"), "{e}");

    // Repeated failed logins lock the name for a while, on every frontend of the node: the right password is refused
    // meanwhile, then works once the lock ran out. Unknown names are counted alike.
    admin.execute_update("CREATE USER carol PASSWORD 'carol'".into(), None).await.expect("create carol");
    let mut guesser = server.flight().await;
    // The client wraps a refused handshake in its own error: read its text.
    for _ in 0..5 {
        let e = guesser.handshake("carol", "guess").await.expect_err("wrong").to_string();
        assert!(e.contains("password authentication failed") && !e.contains("too many"), "{e}");
    }
    let e = guesser.handshake("carol", "carol").await.expect_err("locked").to_string();
    assert!(e.contains("valid authentication credentials"), "UNAUTHENTICATED: {e}");
    assert!(e.contains("too many failed logins for user") && e.contains("carol"), "{e}");
    let e = server.pg("carol", "carol").await.expect_err("locked on the PostgreSQL wire too");
    assert!(message(&e).contains("too many failed logins"), "{}", message(&e));
    for _ in 0..5 {
        let _ = guesser.handshake("nobody", "guess").await;
    }
    let e = guesser.handshake("nobody", "guess").await.expect_err("locked").to_string();
    assert!(e.contains("too many failed logins"), "an unknown name is locked alike: {e}");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    guesser.handshake("carol", "carol").await.expect("the lock ran out");
    server.stop().await;
}

/// Rows of `system.audit` as (event, outcome, user, peer, protocol, detail), oldest first.
async fn audit_rows(admin: &tokio_postgres::Client) -> Vec<[String; 6]> {
    let rows = admin
        .query("SELECT event, outcome, user_name, peer, protocol, detail FROM system.audit ORDER BY id", &[])
        .await
        .expect("system.audit");
    rows.iter().map(|r| std::array::from_fn(|i| r.get::<_, Option<String>>(i).unwrap_or_default())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_changes_and_refusals_go_to_the_audit_log_its_file_and_system_audit() {
    let server = Secured::start_with(&[("QUIVER_LIMITS__CONNECTIONS_PER_USER", "2")]).await;
    let admin = server.pg("admin", ADMIN_PASSWORD).await.expect("admin");
    server.pg("admin", "not the password").await.expect_err("a wrong password is refused");
    admin.batch_execute("CREATE TABLE t (x BIGINT)").await.expect("create t");
    admin.batch_execute("CREATE USER dave PASSWORD 'dave-secret-password'").await.expect("create dave");
    admin.batch_execute("GRANT INSERT ON t TO dave").await.expect("grant");
    let dave = server.pg("dave", "dave-secret-password").await.expect("dave");
    let e = dave.query("SELECT x FROM t", &[]).await.expect_err("dave may not read t");
    assert_eq!(code(&e), "42501", "{e}");
    let e = dave.query("SELECT * FROM system.audit", &[]).await.expect_err("only a superuser reads the audit");
    assert_eq!(code(&e), "42501", "{e}");
    // A user has at most limits.connections_per_user connections open; a closed one frees its place.
    let second = server.pg("dave", "dave-secret-password").await.expect("dave's second connection");
    let e = server.pg("dave", "dave-secret-password").await.expect_err("a third is refused");
    assert_eq!(code(&e), "53300", "{e}");
    assert!(message(&e).contains("too many connections for user \"dave\""), "{}", message(&e));
    drop(second);
    let mut third = None;
    for _ in 0..100 {
        match server.pg("dave", "dave-secret-password").await {
            Ok(client) => {
                third = Some(client);
                break;
            }
            // The closed connection's end reaches the server shortly after the client drops it.
            Err(e) if code(&e) == "53300" => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            Err(e) => panic!("{e}"),
        }
    }
    let third = third.expect("the closed connection's place came free");
    assert_eq!(count(&third, "SELECT count(*) FROM (VALUES (1))").await.expect("works"), 1);
    let mut flight = server.flight().await;
    flight.handshake("admin", ADMIN_PASSWORD).await.expect("handshake");
    let mut forger = server.flight().await;
    forger.set_token("not-a-token".into());
    status(query(&mut forger, "SELECT 1").await.expect_err("forged"));
    // Over Flight SQL, whose connections belong to no user, the limit bounds a user's calls in flight: a DoGet holds
    // its place until its stream ends or the client drops it.
    let mut dave_flight = server.flight().await;
    dave_flight.handshake("dave", "dave-secret-password").await.expect("dave's handshake");
    let mut open = Vec::new();
    for _ in 0..2 {
        let info = dave_flight.execute("SELECT * FROM generate_series(1, 50000000)".into(), None).await.expect("info");
        let ticket = info.endpoint[0].ticket.clone().expect("ticket");
        open.push(dave_flight.do_get(ticket).await.expect("a stream left unread"));
    }
    let e = status(dave_flight.execute("SELECT 1".into(), None).await.expect_err("a third call is refused"));
    assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
    assert!(e.message().contains("too many Flight SQL calls in flight for user \"dave\""), "{e}");
    drop(open.pop());
    let mut freed = false;
    for _ in 0..100 {
        match query(&mut dave_flight, "SELECT 1").await {
            Ok(_) => {
                freed = true;
                break;
            }
            Err(e) => {
                // The dropped stream's reset reaches the server shortly after.
                let e = status(e);
                assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    }
    assert!(freed, "the dropped stream's place came free");
    drop(open);

    let rows = audit_rows(&admin).await;
    let find = |event: &str, outcome: &str, user: &str, protocol: &str, detail: &str| {
        rows.iter()
            .find(|[e, o, u, _, p, d]| e == event && o == outcome && u == user && p == protocol && d.contains(detail))
    };
    let failed = find("login", "failed", "admin", "postgres", "").unwrap_or_else(|| panic!("{rows:#?}"));
    assert!(failed[3].starts_with("127.0.0.1:"), "the peer's address: {failed:?}");
    let ok = find("login", "ok", "admin", "postgres", "").unwrap_or_else(|| panic!("{rows:#?}"));
    assert!(ok[3].starts_with("127.0.0.1:"), "{ok:?}");
    assert!(find("ddl", "ok", "admin", "", "CREATE TABLE t").is_some(), "{rows:#?}");
    assert!(find("dcl", "ok", "admin", "", "CREATE USER dave").is_some(), "{rows:#?}");
    assert!(find("dcl", "ok", "admin", "", "GRANT INSERT ON TABLE t TO dave").is_some(), "{rows:#?}");
    assert!(find("login", "ok", "dave", "postgres", "").is_some(), "{rows:#?}");
    assert!(find("denied", "refused", "dave", "", "lacks SELECT on table \"t\"").is_some(), "{rows:#?}");
    assert!(find("denied", "refused", "dave", "", "system.audit").is_some(), "{rows:#?}");
    assert!(find("login", "ok", "admin", "flight", "").is_some(), "{rows:#?}");
    assert!(find("token", "refused", "", "flight", "").is_some(), "{rows:#?}");
    assert!(find("login", "refused", "dave", "postgres", "too many connections").is_some(), "{rows:#?}");
    assert!(find("login", "refused", "dave", "flight", "too many Flight SQL calls").is_some(), "{rows:#?}");
    assert!(rows.iter().flatten().all(|v| !v.contains("dave-secret-password")), "no password is audited");

    // The file in the data directory holds the same entries, one JSON object per line (written off the request
    // path: wait for it to catch up).
    let path = server.dir.path().join("audit.log");
    let mut entries = Vec::new();
    for _ in 0..100 {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(!text.contains("dave-secret-password"), "no password in the audit file");
        entries = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON line"))
            .collect::<Vec<_>>();
        if entries.len() >= rows.len() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(entries.len() >= rows.len(), "{} entries in the file, {} in system.audit", entries.len(), rows.len());
    let denied = entries
        .iter()
        .find(|e| e["event"] == "denied" && e["user"] == "dave")
        .unwrap_or_else(|| panic!("{entries:#?}"));
    assert_eq!(denied["outcome"], "refused");
    assert!(denied["time_ms"].as_u64().is_some_and(|t| t > 1_700_000_000_000), "{denied}");
    server.stop().await;
}
