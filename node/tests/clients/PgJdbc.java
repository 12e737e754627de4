// The PostgreSQL JDBC driver (pgjdbc) against Quiver's PostgreSQL gateway: connect, DDL, prepared statements with
// typed parameters, result types, and the DatabaseMetaData calls a SQL tool such as DBeaver makes to browse the
// catalog (schemas, tables, columns, primary keys). Run in source-file mode:
//   java -cp /usr/share/java/postgresql.jar PgJdbc.java HOST PORT
// Exits non-zero with a message on the first wrong answer.

import java.math.BigDecimal;
import java.sql.Connection;
import java.sql.DatabaseMetaData;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;

public class PgJdbc {
    static void check(boolean ok, String what) {
        if (!ok) {
            throw new AssertionError(what);
        }
    }

    public static void main(String[] args) throws Exception {
        String url = "jdbc:postgresql://" + args[0] + ":" + args[1] + "/quiver";
        Properties props = new Properties();
        props.setProperty("user", "quiver");
        props.setProperty("password", "");
        props.setProperty("sslmode", "disable");
        try (Connection conn = DriverManager.getConnection(url, props)) {
            DatabaseMetaData md = conn.getMetaData();
            check(md.getDatabaseProductName() != null, "product name");

            try (Statement st = conn.createStatement()) {
                st.execute("CREATE TABLE jdbc_items (id BIGINT NOT NULL PRIMARY KEY, name TEXT, price DECIMAL(10,2),"
                        + " qty INT, ok BOOLEAN, born DATE, at TIMESTAMP)");
                int n = st.executeUpdate("INSERT INTO jdbc_items VALUES (1, 'apple', 1.25, 10, true, DATE '2024-01-02',"
                        + " TIMESTAMP '2024-01-02 03:04:05'), (2, 'pear', 2.50, 20, false, NULL, NULL)");
                check(n == 2, "insert count " + n);
            }

            // Prepared statement with typed parameters (extended protocol).
            try (PreparedStatement ps = conn.prepareStatement("INSERT INTO jdbc_items VALUES (?, ?, ?, ?, ?, NULL, NULL)")) {
                ps.setLong(1, 3);
                ps.setString(2, "plum");
                ps.setBigDecimal(3, new BigDecimal("3.75"));
                ps.setInt(4, 30);
                ps.setBoolean(5, true);
                check(ps.executeUpdate() == 1, "prepared insert count");
            }
            try (PreparedStatement ps = conn.prepareStatement(
                    "SELECT id, name, price, qty, ok, born FROM jdbc_items WHERE qty >= ? ORDER BY id")) {
                ps.setInt(1, 20);
                try (ResultSet rs = ps.executeQuery()) {
                    List<String> got = new ArrayList<>();
                    while (rs.next()) {
                        got.add(rs.getLong(1) + ":" + rs.getString(2) + ":" + rs.getBigDecimal(3) + ":" + rs.getInt(4)
                                + ":" + rs.getBoolean(5) + ":" + rs.getDate(6));
                    }
                    check(got.equals(List.of("2:pear:2.50:20:false:null", "3:plum:3.75:30:true:null")), "select " + got);
                }
            }
            try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery(
                    "SELECT born, at, price FROM jdbc_items WHERE id = 1")) {
                check(rs.next(), "row 1");
                check(rs.getDate(1).toString().equals("2024-01-02"), "date " + rs.getDate(1));
                check(rs.getTimestamp(2).toString().equals("2024-01-02 03:04:05.0"), "timestamp " + rs.getTimestamp(2));
                check(rs.getBigDecimal(3).compareTo(new BigDecimal("1.25")) == 0, "decimal " + rs.getBigDecimal(3));
            }

            // What a catalog browser asks.
            List<String> schemas = new ArrayList<>();
            try (ResultSet rs = md.getSchemas()) {
                while (rs.next()) {
                    schemas.add(rs.getString("TABLE_SCHEM"));
                }
            }
            check(schemas.contains("public"), "schemas " + schemas);
            List<String> tables = new ArrayList<>();
            try (ResultSet rs = md.getTables(null, "public", "%", new String[] {"TABLE"})) {
                while (rs.next()) {
                    tables.add(rs.getString("TABLE_NAME"));
                }
            }
            check(tables.contains("jdbc_items"), "tables " + tables);
            List<String> columns = new ArrayList<>();
            try (ResultSet rs = md.getColumns(null, "public", "jdbc_items", "%")) {
                while (rs.next()) {
                    columns.add(rs.getString("COLUMN_NAME") + ":" + rs.getString("TYPE_NAME") + ":"
                            + rs.getInt("NULLABLE"));
                }
            }
            check(columns.equals(List.of("id:int8:0", "name:text:1", "price:numeric:1", "qty:int4:1", "ok:bool:1",
                    "born:date:1", "at:timestamp:1")), "columns " + columns);
            List<String> keys = new ArrayList<>();
            try (ResultSet rs = md.getPrimaryKeys(null, "public", "jdbc_items")) {
                while (rs.next()) {
                    keys.add(rs.getString("COLUMN_NAME"));
                }
            }
            check(keys.equals(List.of("id")), "primary key " + keys);

            // An error reaches the client with its SQLSTATE; the connection stays usable.
            try (Statement st = conn.createStatement()) {
                st.executeQuery("SELECT * FROM no_such_table");
                check(false, "unknown table accepted");
            } catch (SQLException e) {
                check("42P01".equals(e.getSQLState()), "sqlstate " + e.getSQLState() + ": " + e.getMessage());
            }
            try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery("SELECT count(*) FROM jdbc_items")) {
                check(rs.next() && rs.getLong(1) == 3, "count after error");
            }
        }
        System.out.println("jdbc ok");
    }
}
