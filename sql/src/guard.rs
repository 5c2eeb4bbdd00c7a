//! Read-only SQL: what an analyst's statement may do, checked before it is planned, on the
//! Postgres wire and in the CLI alike.
//!
//! Two checks, each enough alone for what it covers:
//! - the statement's kind, from the parsed AST: queries (`SELECT`, `WITH`, `VALUES`,
//!   `EXPLAIN` of one), `SHOW`, `SET` of a session setting, transactions and cursors pass;
//!   everything else — `INSERT`, `UPDATE`, `DELETE`, `COPY`, `CREATE` (tables, external tables,
//!   views, functions), `DROP`, `ALTER`, `PREPARE` … — is refused with its name;
//! - the plan, by DataFusion's own [`SQLOptions`] (no DDL, no DML, no statements), which also
//!   catches a write hidden inside a query's body.
//!
//! Files outside the lake cannot be named either: the session registers no file-reading table
//! functions, and tables by URL (`SELECT * FROM '/etc/hostname'`) are not enabled.

use datafusion::execution::context::SQLOptions;
use datafusion::logical_expr::LogicalPlan;
use datafusion::sql::sqlparser::ast::Statement;

use crate::{Error, Result};

/// DataFusion's options for analyst statements: read-only.
pub fn options() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

/// Refuses `statement` unless it only reads.
pub fn check_statement(statement: &Statement) -> Result<()> {
    if let Statement::Set(_) = statement
        && statement
            .to_string()
            .to_ascii_lowercase()
            .contains("datafusion.runtime.")
    {
        // The session's memory pool and spill space are the server's to set.
        return Err(Error::User(
            "SET datafusion.runtime.* is refused: the memory limit is sql.memory_limit_mib".into(),
        ));
    }
    match statement {
        Statement::Query(_)
        | Statement::Explain { .. }
        | Statement::ExplainTable { .. }
        | Statement::ShowVariable { .. }
        | Statement::ShowVariables { .. }
        | Statement::ShowTables { .. }
        | Statement::ShowColumns { .. }
        | Statement::ShowFunctions { .. }
        | Statement::ShowSchemas { .. }
        | Statement::ShowDatabases { .. }
        | Statement::ShowStatus { .. }
        | Statement::Set(_)
        | Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Declare { .. }
        | Statement::Fetch { .. }
        | Statement::Close { .. }
        | Statement::Discard { .. } => Ok(()),
        other => Err(Error::User(format!(
            "read-only: {} is refused (the lake and the snapshots are written by Tandem's \
             jobs; analyst SQL only reads)",
            kind(other)
        ))),
    }
}

/// Refuses `plan` unless it only reads (DataFusion's [`SQLOptions`]).
pub fn check_plan(plan: &LogicalPlan) -> Result<()> {
    options()
        .verify_plan(plan)
        .map_err(|e| Error::User(format!("read-only: {}", e.strip_backtrace())))
}

/// A statement's kind as its SQL spells it: the words before its first name or `(`.
fn kind(statement: &Statement) -> String {
    let sql = statement.to_string();
    let words: Vec<&str> = sql
        .split_whitespace()
        .take_while(|w| {
            w.chars()
                .all(|c| c.is_ascii_uppercase() || c == '_' || c == '-')
        })
        .take(3)
        .collect();
    if words.is_empty() {
        "this statement".to_string()
    } else {
        words.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use datafusion::sql::parser::DFParser;

    use super::*;

    fn first(sql: &str) -> Statement {
        // The Postgres dialect: what the wire parses with.
        let dialect = datafusion::sql::sqlparser::dialect::PostgreSqlDialect {};
        datafusion::sql::sqlparser::parser::Parser::parse_sql(&dialect, sql)
            .unwrap()
            .remove(0)
    }

    #[test]
    fn reads_pass_and_writes_are_refused_by_name() {
        for ok in [
            "SELECT 1",
            "WITH a AS (SELECT 1) SELECT * FROM a",
            "EXPLAIN SELECT 1",
            "SHOW TABLES",
            "SET statement_timeout = '1s'",
            "SET datafusion.execution.batch_size = 1024",
            "BEGIN",
            "COMMIT",
        ] {
            check_statement(&first(ok)).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for (bad, named) in [
            ("INSERT INTO events_all VALUES (1)", "INSERT INTO"),
            ("COPY events TO '/tmp/x.csv'", "COPY"),
            ("DELETE FROM profiles", "DELETE FROM"),
            ("DROP TABLE profiles", "DROP TABLE"),
            ("CREATE TABLE t (a INT)", "CREATE TABLE"),
            ("CREATE VIEW v AS SELECT 1", "CREATE VIEW"),
            ("UPDATE profiles SET units = 0", "UPDATE"),
            (
                "SET datafusion.runtime.memory_limit = '100G'",
                "sql.memory_limit_mib",
            ),
        ] {
            let e = check_statement(&first(bad)).unwrap_err().to_string();
            assert!(e.contains(named), "{bad}: {e}");
        }
    }

    #[test]
    fn datafusion_statements_are_refused_too() {
        // What DataFusion's own parser adds to the dialect's: external tables and COPY TO.
        for bad in [
            "CREATE EXTERNAL TABLE h STORED AS CSV LOCATION '/etc/hostname'",
            "COPY (SELECT 1) TO '/tmp/x.parquet'",
        ] {
            let st = DFParser::parse_sql(bad).unwrap().pop_front().unwrap();
            let ok = match st {
                datafusion::sql::parser::Statement::Statement(s) => check_statement(&s).is_ok(),
                _ => false,
            };
            assert!(!ok, "{bad} passed");
        }
    }
}
