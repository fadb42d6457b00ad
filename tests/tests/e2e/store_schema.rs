//! The SQLite and PostgreSQL schemas stay the same schema: after every
//! migration, both have the same tables, columns (type, nullability),
//! primary keys, unique keys, foreign keys, indexes, CHECK constraints (by
//! column) and append-only triggers.

use std::collections::BTreeSet;

use palisade_broker::db::Db;
use palisade_tests::store::TestDatabase;
use sqlx::AnyPool;

/// One fact about a schema, as a comparable line.
type Facts = BTreeSet<String>;

#[tokio::test]
async fn the_sqlite_and_postgresql_schemas_are_equivalent() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let sqlite = Db::open(&format!("sqlite://{}", dir.path().join("schema.db").display())).await.expect("SQLite");
    let pg_db = TestDatabase::create();
    let pg = Db::open(pg_db.url()).await.expect("PostgreSQL");

    let lite = sqlite_facts(sqlite.pool()).await;
    let post = pg_facts(pg.pool()).await;
    assert!(lite.len() > 100, "the SQLite schema was read: {lite:#?}");
    let only_sqlite: Vec<_> = lite.difference(&post).collect();
    let only_pg: Vec<_> = post.difference(&lite).collect();
    assert!(
        only_sqlite.is_empty() && only_pg.is_empty(),
        "the schemas differ\n  only in migrations/sqlite: {only_sqlite:#?}\n  only in migrations/postgres: {only_pg:#?}"
    );
    pg.close().await;
}

/// The engines' names for the same column types.
fn normal_type(t: &str) -> String {
    match t.to_ascii_lowercase().as_str() {
        "integer" | "bigint" | "int8" => "int".into(),
        "text" => "text".into(),
        "blob" | "bytea" => "bytes".into(),
        other => other.into(),
    }
}

async fn strings(pool: &AnyPool, sql: &'static str) -> Vec<Vec<String>> {
    use sqlx::Row as _;
    let rows = sqlx::query(sql).fetch_all(pool).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.iter()
        .map(|row| {
            (0..sqlx::Row::len(row))
                .map(|i| {
                    row.try_get::<Option<String>, _>(i)
                        .map(Option::unwrap_or_default)
                        .or_else(|_| row.try_get::<i64, _>(i).map(|n| n.to_string()))
                        .unwrap_or_else(|e| panic!("{sql} column {i}: {e}"))
                })
                .collect()
        })
        .collect()
}

async fn sqlite_facts(pool: &AnyPool) -> Facts {
    let mut facts = Facts::new();
    let tables = "SELECT m.name FROM sqlite_master m WHERE m.type = 'table' \
                  AND m.name NOT LIKE 'sqlite_%' AND m.name <> '_sqlx_migrations'";
    for row in strings(pool, tables).await {
        facts.insert(format!("table {}", row[0]));
    }
    let columns = "SELECT m.name, c.name, c.type, c.\"notnull\", c.pk FROM sqlite_master m \
                   JOIN pragma_table_info(m.name) c WHERE m.type = 'table' \
                   AND m.name NOT LIKE 'sqlite_%' AND m.name <> '_sqlx_migrations'";
    let mut pk: std::collections::BTreeMap<String, Vec<(i64, String)>> = Default::default();
    for r in strings(pool, columns).await {
        // SQLite lets a PRIMARY KEY column be NULL unless it says NOT NULL; PostgreSQL never does.
        let not_null = r[3] == "1" || r[4] != "0";
        facts.insert(format!("column {}.{} {} {}", r[0], r[1], normal_type(&r[2]), null_word(not_null)));
        if r[4] != "0" {
            pk.entry(r[0].clone()).or_default().push((r[4].parse().unwrap_or(0), r[1].clone()));
        }
    }
    for (table, mut cols) in pk {
        cols.sort();
        let cols: Vec<_> = cols.into_iter().map(|(_, c)| c).collect();
        facts.insert(format!("primary key {table} ({})", cols.join(", ")));
    }
    let indexes = "SELECT m.name, i.name, i.\"unique\", i.origin, \
                   (SELECT group_concat(name, ', ') FROM (SELECT ii.name FROM pragma_index_info(i.name) ii ORDER BY ii.seqno)) \
                   FROM sqlite_master m JOIN pragma_index_list(m.name) i WHERE m.type = 'table' \
                   AND m.name NOT LIKE 'sqlite_%' AND m.name <> '_sqlx_migrations'";
    for r in strings(pool, indexes).await {
        match (r[3].as_str(), r[2].as_str()) {
            ("pk", _) => {}
            (_, "1") => {
                facts.insert(format!("unique {} ({})", r[0], r[4]));
            }
            _ => {
                facts.insert(format!("index {} {} ({})", r[0], r[1], r[4]));
            }
        }
    }
    let fks = "SELECT m.name, f.\"from\", f.\"table\", f.\"to\", f.on_delete FROM sqlite_master m \
               JOIN pragma_foreign_key_list(m.name) f WHERE m.type = 'table'";
    for r in strings(pool, fks).await {
        facts.insert(format!("foreign key {}.{} -> {}.{} on delete {}", r[0], r[1], r[2], r[3], r[4].to_lowercase()));
    }
    let triggers = "SELECT name, tbl_name FROM sqlite_master WHERE type = 'trigger'";
    for r in strings(pool, triggers).await {
        facts.insert(format!("trigger {} on {}", r[0], r[1]));
    }
    let checks = "SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name <> '_sqlx_migrations'";
    for r in strings(pool, checks).await {
        for column in checked_columns(&r[1]) {
            facts.insert(format!("check {}.{column}", r[0]));
        }
    }
    facts
}

async fn pg_facts(pool: &AnyPool) -> Facts {
    let mut facts = Facts::new();
    let tables = "SELECT table_name::text FROM information_schema.tables \
                  WHERE table_schema = 'public' AND table_type = 'BASE TABLE' AND table_name <> '_sqlx_migrations'";
    for row in strings(pool, tables).await {
        facts.insert(format!("table {}", row[0]));
    }
    let columns = "SELECT table_name::text, column_name::text, data_type::text, is_nullable::text \
                   FROM information_schema.columns WHERE table_schema = 'public' AND table_name <> '_sqlx_migrations'";
    for r in strings(pool, columns).await {
        facts.insert(format!("column {}.{} {} {}", r[0], r[1], normal_type(&r[2]), null_word(r[3] == "NO")));
    }
    let keys = "SELECT c.conrelid::regclass::text, c.contype::text, \
                (SELECT string_agg(a.attname::text, ', ' ORDER BY k.ord) FROM unnest(c.conkey) WITH ORDINALITY k(attnum, ord) \
                 JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum), \
                c.confrelid::regclass::text, \
                (SELECT string_agg(a.attname::text, ', ' ORDER BY k.ord) FROM unnest(c.confkey) WITH ORDINALITY k(attnum, ord) \
                 JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.attnum), \
                c.confdeltype::text \
                FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace \
                WHERE n.nspname = 'public' AND c.conrelid::regclass::text <> '_sqlx_migrations'";
    for r in strings(pool, keys).await {
        match r[1].as_str() {
            "p" => facts.insert(format!("primary key {} ({})", r[0], r[2])),
            "u" => facts.insert(format!("unique {} ({})", r[0], r[2])),
            "f" => facts.insert(format!(
                "foreign key {}.{} -> {}.{} on delete {}",
                r[0],
                r[2],
                r[3],
                r[4],
                fk_action(&r[5])
            )),
            "c" => r[2].split(", ").fold(false, |_, col| facts.insert(format!("check {}.{col}", r[0]))),
            _ => false,
        };
    }
    let indexes = "SELECT t.relname::text, i.relname::text, ix.indisunique::text, \
                   (SELECT string_agg(a.attname::text, ', ' ORDER BY k.ord) FROM unnest(ix.indkey) WITH ORDINALITY k(attnum, ord) \
                    JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum) \
                   FROM pg_index ix JOIN pg_class i ON i.oid = ix.indexrelid JOIN pg_class t ON t.oid = ix.indrelid \
                   JOIN pg_namespace n ON n.oid = t.relnamespace \
                   WHERE n.nspname = 'public' AND NOT ix.indisprimary AND t.relname <> '_sqlx_migrations' \
                   AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = ix.indexrelid)";
    for r in strings(pool, indexes).await {
        if r[2] == "true" {
            facts.insert(format!("unique {} ({})", r[0], r[3]));
        } else {
            facts.insert(format!("index {} {} ({})", r[0], r[1], r[3]));
        }
    }
    // Change-notification triggers exist only on PostgreSQL (migration 0014).
    let triggers = "SELECT DISTINCT trigger_name::text, event_object_table::text FROM information_schema.triggers \
                    WHERE trigger_schema = 'public' AND trigger_name NOT LIKE 'palisade\\_notify\\_%'";
    for r in strings(pool, triggers).await {
        facts.insert(format!("trigger {} on {}", r[0], r[1]));
    }
    facts
}

fn null_word(not_null: bool) -> &'static str {
    if not_null { "not null" } else { "null" }
}

fn fk_action(code: &str) -> &'static str {
    match code {
        "c" => "cascade",
        "n" => "set null",
        "r" => "restrict",
        "d" => "set default",
        _ => "no action",
    }
}

/// The columns a `CREATE TABLE` statement's CHECK constraints name: the
/// first identifier inside each `CHECK (` (the keyword, not a name that
/// contains it).
fn checked_columns(create: &str) -> Vec<String> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let upper = create.to_ascii_uppercase();
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(at) = upper[from..].find("CHECK") {
        let start = from + at;
        from = start + 5;
        let keyword = !create[..start].chars().next_back().is_some_and(ident);
        let Some(inside) = create[from..].trim_start().strip_prefix('(') else { continue };
        let column: String = inside.trim_start().chars().take_while(|c| ident(*c)).collect();
        if keyword && !column.is_empty() {
            out.push(column);
        }
    }
    out
}
