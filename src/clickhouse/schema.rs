//! Table schema: reads a table's columns from `system.columns` and parses
//! each type name into a [`ColumnType`] the encoder in [`crate::clickhouse::native`]
//! understands.
//!
//! Types are parsed from the spelling servers print (`Nullable(Int32)`,
//! `DateTime('UTC')`, `Decimal(18, 4)`, `Enum8('a' = 1)` …); anything the
//! encoder cannot write (Map, Tuple, Int128, …) is an error naming the type,
//! so a bad table is reported when a flow starts rather than per message.

use std::fmt;

/// A ClickHouse column type the encoder can write.
#[derive(Debug, Clone, PartialEq)]
pub enum ColumnType {
    Int8,
    Int16,
    Int32,
    Int64,
    UInt8,
    UInt16,
    UInt32,
    UInt64,
    Float32,
    Float64,
    String,
    FixedString(usize),
    Date,
    /// The time zone argument, if any, is dropped: the data is unix seconds.
    DateTime,
    DateTime64 {
        precision: u32,
    },
    Uuid,
    Bool,
    Enum8(Vec<(String, i8)>),
    Enum16(Vec<(String, i16)>),
    Decimal {
        precision: u32,
        scale: u32,
    },
    Nullable(Box<ColumnType>),
    LowCardinality(Box<ColumnType>),
    Array(Box<ColumnType>),
}

/// Why a schema could not be loaded or a type not used.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("unsupported column type `{type_name}`: {reason}")]
    UnsupportedType { type_name: String, reason: String },
    #[error(
        "table `{database}`.`{table}`, column `{column}`: unsupported type `{type_name}`: {reason}"
    )]
    UnsupportedColumn {
        database: String,
        table: String,
        column: String,
        type_name: String,
        reason: String,
    },
    #[error("table `{database}`.`{table}`, column `{column}`: unknown default kind `{kind}`")]
    UnknownDefaultKind {
        database: String,
        table: String,
        column: String,
        kind: String,
    },
    #[error("table `{database}`.`{table}` not found")]
    TableNotFound { database: String, table: String },
    #[error("reading the columns of `{database}`.`{table}` from system.columns: {source}")]
    Query {
        database: String,
        table: String,
        #[source]
        source: clickhouse::error::Error,
    },
}

impl ColumnType {
    /// Parses a type name as the server prints it in `system.columns`.
    pub fn parse(type_name: &str) -> Result<ColumnType, SchemaError> {
        let mut p = Parser {
            s: type_name.as_bytes(),
            pos: 0,
        };
        let ty = p.parse_type().and_then(|ty| {
            p.skip_ws();
            if p.pos == p.s.len() {
                Ok(ty)
            } else {
                Err(format!("unexpected text at byte {}", p.pos))
            }
        });
        ty.map_err(|reason| SchemaError::UnsupportedType {
            type_name: type_name.to_owned(),
            reason,
        })
    }

    /// Whether the type is `String` or `FixedString`, where `""` is a value
    /// rather than NULL.
    pub fn is_stringy(&self) -> bool {
        matches!(self, ColumnType::String | ColumnType::FixedString(_))
    }
}

impl fmt::Display for ColumnType {
    /// The canonical spelling, as a current server prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn members<T: fmt::Display>(f: &mut fmt::Formatter<'_>, m: &[(String, T)]) -> fmt::Result {
            for (i, (name, n)) in m.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                f.write_str("'")?;
                for c in name.chars() {
                    match c {
                        '\'' => f.write_str("\\'")?,
                        '\\' => f.write_str("\\\\")?,
                        c => write!(f, "{c}")?,
                    }
                }
                write!(f, "' = {n}")?;
            }
            Ok(())
        }
        match self {
            ColumnType::Int8 => f.write_str("Int8"),
            ColumnType::Int16 => f.write_str("Int16"),
            ColumnType::Int32 => f.write_str("Int32"),
            ColumnType::Int64 => f.write_str("Int64"),
            ColumnType::UInt8 => f.write_str("UInt8"),
            ColumnType::UInt16 => f.write_str("UInt16"),
            ColumnType::UInt32 => f.write_str("UInt32"),
            ColumnType::UInt64 => f.write_str("UInt64"),
            ColumnType::Float32 => f.write_str("Float32"),
            ColumnType::Float64 => f.write_str("Float64"),
            ColumnType::String => f.write_str("String"),
            ColumnType::FixedString(n) => write!(f, "FixedString({n})"),
            ColumnType::Date => f.write_str("Date"),
            ColumnType::DateTime => f.write_str("DateTime"),
            ColumnType::DateTime64 { precision } => write!(f, "DateTime64({precision})"),
            ColumnType::Uuid => f.write_str("UUID"),
            ColumnType::Bool => f.write_str("Bool"),
            ColumnType::Enum8(m) => {
                f.write_str("Enum8(")?;
                members(f, m)?;
                f.write_str(")")
            }
            ColumnType::Enum16(m) => {
                f.write_str("Enum16(")?;
                members(f, m)?;
                f.write_str(")")
            }
            ColumnType::Decimal { precision, scale } => write!(f, "Decimal({precision}, {scale})"),
            ColumnType::Nullable(t) => write!(f, "Nullable({t})"),
            ColumnType::LowCardinality(t) => write!(f, "LowCardinality({t})"),
            ColumnType::Array(t) => write!(f, "Array({t})"),
        }
    }
}

/// Recursive-descent parser over a type name; errors are plain reasons that
/// [`ColumnType::parse`] wraps with the whole type name.
struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while self.s.get(self.pos).is_some_and(u8::is_ascii_whitespace) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        self.skip_ws();
        if self.s.get(self.pos) == Some(&c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: u8) -> Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!("expected `{}` at byte {}", c as char, self.pos))
        }
    }

    fn ident(&mut self) -> Result<&str, String> {
        self.skip_ws();
        let start = self.pos;
        while self
            .s
            .get(self.pos)
            .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
        {
            self.pos += 1;
        }
        if start == self.pos {
            return Err(format!("expected a type name at byte {start}"));
        }
        // Only ASCII was consumed.
        Ok(std::str::from_utf8(&self.s[start..self.pos]).unwrap_or_default())
    }

    fn integer(&mut self) -> Result<i64, String> {
        self.skip_ws();
        let start = self.pos;
        if matches!(self.s.get(self.pos), Some(b'-' | b'+')) {
            self.pos += 1;
        }
        while self.s.get(self.pos).is_some_and(u8::is_ascii_digit) {
            self.pos += 1;
        }
        std::str::from_utf8(&self.s[start..self.pos])
            .ok()
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| format!("expected a number at byte {start}"))
    }

    fn small_uint(&mut self, what: &str, max: u32) -> Result<u32, String> {
        let n = self.integer()?;
        u32::try_from(n)
            .ok()
            .filter(|n| *n <= max)
            .ok_or_else(|| format!("{what} {n} is outside 0..={max}"))
    }

    /// A single-quoted string with backslash escapes.
    fn quoted(&mut self) -> Result<String, String> {
        self.skip_ws();
        if self.s.get(self.pos) != Some(&b'\'') {
            return Err(format!("expected a quoted string at byte {}", self.pos));
        }
        self.pos += 1;
        let mut out = Vec::new();
        loop {
            let Some(&c) = self.s.get(self.pos) else {
                return Err("unterminated string".to_owned());
            };
            self.pos += 1;
            match c {
                b'\'' => break,
                b'\\' => {
                    let Some(&e) = self.s.get(self.pos) else {
                        return Err("unterminated string".to_owned());
                    };
                    self.pos += 1;
                    out.push(match e {
                        b'n' => b'\n',
                        b't' => b'\t',
                        b'r' => b'\r',
                        b'0' => 0,
                        b'b' => 8,
                        b'f' => 12,
                        b'a' => 7,
                        b'v' => 11,
                        b'x' => {
                            let hex = self
                                .s
                                .get(self.pos..self.pos + 2)
                                .and_then(|h| std::str::from_utf8(h).ok());
                            let byte = hex
                                .and_then(|h| u8::from_str_radix(h, 16).ok())
                                .ok_or("bad \\x escape")?;
                            self.pos += 2;
                            byte
                        }
                        other => other,
                    });
                }
                other => out.push(other),
            }
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    fn enum_members(&mut self, lo: i64, hi: i64) -> Result<Vec<(String, i64)>, String> {
        self.expect(b'(')?;
        let mut members = Vec::new();
        loop {
            let name = self.quoted()?;
            self.expect(b'=')?;
            let n = self.integer()?;
            if n < lo || n > hi {
                return Err(format!("enum value {n} is outside {lo}..={hi}"));
            }
            members.push((name, n));
            if !self.eat(b',') {
                break;
            }
        }
        self.expect(b')')?;
        Ok(members)
    }

    fn inner(&mut self) -> Result<ColumnType, String> {
        self.expect(b'(')?;
        let t = self.parse_type()?;
        self.expect(b')')?;
        Ok(t)
    }

    fn parse_type(&mut self) -> Result<ColumnType, String> {
        let name = self.ident()?.to_owned();
        let ty = match name.as_str() {
            "Int8" => ColumnType::Int8,
            "Int16" => ColumnType::Int16,
            "Int32" => ColumnType::Int32,
            "Int64" => ColumnType::Int64,
            "UInt8" => ColumnType::UInt8,
            "UInt16" => ColumnType::UInt16,
            "UInt32" => ColumnType::UInt32,
            "UInt64" => ColumnType::UInt64,
            "Float32" => ColumnType::Float32,
            "Float64" => ColumnType::Float64,
            "String" => ColumnType::String,
            "Date" => ColumnType::Date,
            "UUID" => ColumnType::Uuid,
            "Bool" | "Boolean" => ColumnType::Bool,
            "FixedString" => {
                self.expect(b'(')?;
                let n = self.integer()?;
                self.expect(b')')?;
                match usize::try_from(n) {
                    Ok(n) if n > 0 => ColumnType::FixedString(n),
                    _ => return Err(format!("FixedString length {n} must be positive")),
                }
            }
            "DateTime" => {
                if self.eat(b'(') {
                    self.quoted()?;
                    self.expect(b')')?;
                }
                ColumnType::DateTime
            }
            "DateTime64" => {
                self.expect(b'(')?;
                let precision = self.small_uint("DateTime64 precision", 9)?;
                if self.eat(b',') {
                    self.quoted()?;
                }
                self.expect(b')')?;
                ColumnType::DateTime64 { precision }
            }
            "Decimal" => {
                self.expect(b'(')?;
                let precision = self.integer()?;
                let scale = if self.eat(b',') { self.integer()? } else { 0 };
                self.expect(b')')?;
                decimal(precision, scale)?
            }
            "Decimal32" | "Decimal64" | "Decimal128" | "Decimal256" => {
                self.expect(b'(')?;
                let scale = self.integer()?;
                self.expect(b')')?;
                let precision = match name.as_str() {
                    "Decimal32" => 9,
                    "Decimal64" => 18,
                    "Decimal128" => 38,
                    _ => 76,
                };
                decimal(precision, scale)?
            }
            "Enum8" => ColumnType::Enum8(
                self.enum_members(i8::MIN.into(), i8::MAX.into())?
                    .into_iter()
                    .map(|(s, n)| (s, n as i8))
                    .collect(),
            ),
            "Enum16" => ColumnType::Enum16(
                self.enum_members(i16::MIN.into(), i16::MAX.into())?
                    .into_iter()
                    .map(|(s, n)| (s, n as i16))
                    .collect(),
            ),
            "Nullable" => match self.inner()? {
                t @ (ColumnType::Nullable(_)
                | ColumnType::Array(_)
                | ColumnType::LowCardinality(_)) => {
                    return Err(format!("Nullable({t}) is not supported"))
                }
                t => ColumnType::Nullable(Box::new(t)),
            },
            "LowCardinality" => match self.inner()? {
                t @ (ColumnType::Array(_) | ColumnType::LowCardinality(_)) => {
                    return Err(format!("LowCardinality({t}) is not supported"))
                }
                t => ColumnType::LowCardinality(Box::new(t)),
            },
            "Array" => ColumnType::Array(Box::new(self.inner()?)),
            other => return Err(format!("{other} is not supported")),
        };
        Ok(ty)
    }
}

fn decimal(precision: i64, scale: i64) -> Result<ColumnType, String> {
    if !(1..=38).contains(&precision) {
        return Err(format!(
            "Decimal precision {precision} is not supported (1..=38)"
        ));
    }
    if !(0..=precision).contains(&scale) {
        return Err(format!("Decimal scale {scale} is outside 0..={precision}"));
    }
    Ok(ColumnType::Decimal {
        precision: precision as u32,
        scale: scale as u32,
    })
}

/// How a column gets its value when an INSERT does not give one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultKind {
    None,
    Default,
    Materialized,
    Alias,
}

impl DefaultKind {
    /// `system.columns.default_kind`; `EPHEMERAL` (22.x+) columns are written
    /// like `DEFAULT` ones.
    fn parse(kind: &str) -> Option<DefaultKind> {
        match kind {
            "" => Some(DefaultKind::None),
            "DEFAULT" | "EPHEMERAL" => Some(DefaultKind::Default),
            "MATERIALIZED" => Some(DefaultKind::Materialized),
            "ALIAS" => Some(DefaultKind::Alias),
            _ => None,
        }
    }
}

/// One column of a table.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnSpec {
    pub name: String,
    /// Exactly as the server printed it; sent back as the Native column type.
    pub type_name: String,
    /// The parsed type. A MATERIALIZED or ALIAS column of a type the encoder
    /// cannot write gets `String` as a placeholder: it is never written.
    pub ty: ColumnType,
    pub default_kind: DefaultKind,
}

/// A table's columns, in table order.
#[derive(Debug, Clone, PartialEq)]
pub struct TableSchema {
    pub database: String,
    pub table: String,
    pub columns: Vec<ColumnSpec>,
}

impl TableSchema {
    /// Reads `system.columns` (works on ClickHouse 18.16 and current
    /// releases; the client is built with `.with_validation(false)`).
    /// Database and table are bound as parameters, never formatted into SQL.
    /// Rows come in table order: servers list one table's columns that way.
    pub async fn load(
        client: &clickhouse::Client,
        database: &str,
        table: &str,
    ) -> Result<TableSchema, SchemaError> {
        let rows: Vec<(String, String, String)> = client
            .query("SELECT name, type, default_kind FROM system.columns WHERE database = ? AND table = ?")
            .bind(database)
            .bind(table)
            .fetch_all()
            .await
            .map_err(|source| SchemaError::Query {
                database: database.to_owned(),
                table: table.to_owned(),
                source,
            })?;
        Self::from_rows(database, table, rows)
    }

    /// Builds a schema from `(name, type, default_kind)` rows.
    fn from_rows(
        database: &str,
        table: &str,
        rows: Vec<(String, String, String)>,
    ) -> Result<TableSchema, SchemaError> {
        if rows.is_empty() {
            return Err(SchemaError::TableNotFound {
                database: database.to_owned(),
                table: table.to_owned(),
            });
        }
        let columns = rows
            .into_iter()
            .map(|(name, type_name, kind)| {
                let default_kind =
                    DefaultKind::parse(&kind).ok_or_else(|| SchemaError::UnknownDefaultKind {
                        database: database.to_owned(),
                        table: table.to_owned(),
                        column: name.clone(),
                        kind: kind.clone(),
                    })?;
                let ty = match ColumnType::parse(&type_name) {
                    Ok(ty) => ty,
                    // A column nobody can write needs no encoder.
                    Err(_)
                        if matches!(
                            default_kind,
                            DefaultKind::Materialized | DefaultKind::Alias
                        ) =>
                    {
                        ColumnType::String
                    }
                    Err(SchemaError::UnsupportedType { reason, .. }) => {
                        return Err(SchemaError::UnsupportedColumn {
                            database: database.to_owned(),
                            table: table.to_owned(),
                            column: name,
                            type_name,
                            reason,
                        })
                    }
                    Err(e) => return Err(e),
                };
                Ok(ColumnSpec {
                    name,
                    type_name,
                    ty,
                    default_kind,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(TableSchema {
            database: database.to_owned(),
            table: table.to_owned(),
            columns,
        })
    }

    /// What changed from `old` to `self`, for the log line of a schema
    /// refresh: `added c String; dropped d; x: Int32 → Int64`. Empty when
    /// the columns are the same.
    pub fn changes_since(&self, old: &TableSchema) -> String {
        let find = |list: &[ColumnSpec], name: &str| list.iter().find(|c| c.name == name).cloned();
        let mut out = Vec::new();
        for c in &self.columns {
            match find(&old.columns, &c.name) {
                None => out.push(format!("added {} {}", c.name, c.type_name)),
                Some(o) if o.type_name != c.type_name || o.default_kind != c.default_kind => out
                    .push(format!(
                        "{}: {} {:?} → {} {:?}",
                        c.name, o.type_name, o.default_kind, c.type_name, c.default_kind
                    )),
                Some(_) => {}
            }
        }
        for o in &old.columns {
            if find(&self.columns, &o.name).is_none() {
                out.push(format!("dropped {}", o.name));
            }
        }
        if out.is_empty() && self.columns != old.columns {
            out.push("columns reordered".into());
        }
        out.join("; ")
    }

    /// Columns we may write: everything but MATERIALIZED and ALIAS.
    pub fn insertable(&self) -> impl Iterator<Item = &ColumnSpec> {
        self.columns.iter().filter(|c| {
            !matches!(
                c.default_kind,
                DefaultKind::Materialized | DefaultKind::Alias
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ColumnType as T;

    fn p(s: &str) -> ColumnType {
        ColumnType::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_server_spellings() {
        assert_eq!(p("Nullable(Int32)"), T::Nullable(Box::new(T::Int32)));
        assert_eq!(p("DateTime('UTC')"), T::DateTime);
        assert_eq!(p("DateTime"), T::DateTime);
        assert_eq!(p("DateTime64(3)"), T::DateTime64 { precision: 3 });
        assert_eq!(p("DateTime64(3, 'UTC')"), T::DateTime64 { precision: 3 });
        assert_eq!(
            p("Decimal(18, 4)"),
            T::Decimal {
                precision: 18,
                scale: 4
            }
        );
        assert_eq!(
            p("Decimal32(2)"),
            T::Decimal {
                precision: 9,
                scale: 2
            }
        );
        assert_eq!(
            p("Decimal64(5)"),
            T::Decimal {
                precision: 18,
                scale: 5
            }
        );
        assert_eq!(
            p("Decimal128(7)"),
            T::Decimal {
                precision: 38,
                scale: 7
            }
        );
        assert_eq!(
            p("Enum8('a' = 1, 'b\\'c' = 2)"),
            T::Enum8(vec![("a".into(), 1), ("b'c".into(), 2)])
        );
        assert_eq!(
            p("Enum16('x,y' = -300, 'z=\\\\' = 2)"),
            T::Enum16(vec![("x,y".into(), -300), ("z=\\".into(), 2)])
        );
        assert_eq!(p("FixedString(16)"), T::FixedString(16));
        assert_eq!(
            p("LowCardinality(Nullable(String))"),
            T::LowCardinality(Box::new(T::Nullable(Box::new(T::String))))
        );
        assert_eq!(
            p("Array(Nullable(UInt8))"),
            T::Array(Box::new(T::Nullable(Box::new(T::UInt8))))
        );
        assert_eq!(
            p("Array(Array(LowCardinality(String)))"),
            T::Array(Box::new(T::Array(Box::new(T::LowCardinality(Box::new(
                T::String
            ))))))
        );
        assert_eq!(p("Bool"), T::Bool);
        assert_eq!(p("UUID"), T::Uuid);
        assert_eq!(p(" Array( String ) "), T::Array(Box::new(T::String)));
    }

    #[test]
    fn rejects_unsupported_types_by_name() {
        for (s, why) in [
            ("Map(String, UInt64)", "Map is not supported"),
            ("Tuple(a String)", "Tuple is not supported"),
            ("Int128", "Int128 is not supported"),
            (
                "Decimal256(4)",
                "Decimal precision 76 is not supported (1..=38)",
            ),
            (
                "Decimal(39, 2)",
                "Decimal precision 39 is not supported (1..=38)",
            ),
            ("Decimal(5, 6)", "Decimal scale 6 is outside 0..=5"),
            ("Enum8('a' = 200)", "enum value 200 is outside -128..=127"),
            ("DateTime64(10)", "DateTime64 precision 10 is outside 0..=9"),
            (
                "Nullable(Array(String))",
                "Nullable(Array(String)) is not supported",
            ),
            (
                "LowCardinality(Array(String))",
                "LowCardinality(Array(String)) is not supported",
            ),
            ("FixedString(0)", "FixedString length 0 must be positive"),
        ] {
            let err = ColumnType::parse(s).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("unsupported column type `{s}`: {why}")
            );
        }
        for s in [
            "",
            "Array(",
            "Int32 x",
            "Enum8('a)",
            "FixedString(x)",
            "Nullable()",
        ] {
            assert!(ColumnType::parse(s).is_err(), "{s:?}");
        }
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "Array(LowCardinality(Nullable(String)))",
            "Enum8('a' = 1, 'b\\'c' = 2)",
            "Decimal(18, 4)",
            "DateTime64(6)",
            "FixedString(3)",
            "UUID",
            "Bool",
        ] {
            assert_eq!(p(s).to_string(), s);
            assert_eq!(p(&p(s).to_string()), p(s));
        }
    }

    fn row(n: &str, t: &str, k: &str) -> (String, String, String) {
        (n.into(), t.into(), k.into())
    }

    #[test]
    fn schema_from_rows() {
        let s = TableSchema::from_rows(
            "db",
            "t",
            vec![
                row("a", "UInt64", ""),
                row("b", "String", "DEFAULT"),
                row("c", "Map(String, String)", "MATERIALIZED"),
                row("d", "String", "ALIAS"),
                row("e", "String", "EPHEMERAL"),
            ],
        )
        .unwrap();
        let names: Vec<_> = s.insertable().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "e"]);
        assert_eq!(s.columns[1].default_kind, DefaultKind::Default);

        let err = TableSchema::from_rows("db", "t", vec![]).unwrap_err();
        assert_eq!(err.to_string(), "table `db`.`t` not found");
        let err = TableSchema::from_rows("db", "t", vec![row("m", "Map(String, String)", "")])
            .unwrap_err();
        assert_eq!(err.to_string(), "table `db`.`t`, column `m`: unsupported type `Map(String, String)`: Map is not supported");
        let err = TableSchema::from_rows("db", "t", vec![row("m", "String", "WEIRD")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "table `db`.`t`, column `m`: unknown default kind `WEIRD`"
        );
    }

    /// Loads schemas from a real server; runs only with
    /// `SLUICE_TEST_CLICKHOUSE_URL` set.
    #[tokio::test]
    async fn load_from_server() {
        let Ok(url) = std::env::var("SLUICE_TEST_CLICKHOUSE_URL") else {
            eprintln!("SLUICE_TEST_CLICKHOUSE_URL not set; skipping");
            return;
        };
        let client = clickhouse::Client::default()
            .with_url(url)
            .with_validation(false);
        let table = format!("sluice_schema_{}", std::process::id());
        client
            .query(&format!("DROP TABLE IF EXISTS {table}"))
            .execute()
            .await
            .unwrap();
        client
            .query(&format!(
                "CREATE TABLE {table} (id UInt64, tz DateTime('UTC'), d Int32 DEFAULT 1, \
                 m String MATERIALIZED 'x', a String ALIAS 'y') ENGINE = Memory"
            ))
            .execute()
            .await
            .unwrap();
        let schema = TableSchema::load(&client, "default", &table).await.unwrap();
        let got: Vec<_> = schema
            .columns
            .iter()
            .map(|c| (c.name.as_str(), c.type_name.as_str(), c.default_kind))
            .collect();
        assert_eq!(
            got,
            [
                ("id", "UInt64", DefaultKind::None),
                ("tz", "DateTime('UTC')", DefaultKind::None),
                ("d", "Int32", DefaultKind::Default),
                ("m", "String", DefaultKind::Materialized),
                ("a", "String", DefaultKind::Alias),
            ]
        );
        assert_eq!(schema.insertable().count(), 3);

        // Names are bound, not spliced: a quote is just part of a name.
        let err = TableSchema::load(&client, "default", "x' OR '1'='1")
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "table `default`.`x' OR '1'='1` not found");

        client
            .query(&format!("DROP TABLE {table}"))
            .execute()
            .await
            .unwrap();
        client
            .query(&format!(
                "CREATE TABLE {table} (id UInt64, t Tuple(UInt8, String)) ENGINE = Memory"
            ))
            .execute()
            .await
            .unwrap();
        let err = TableSchema::load(&client, "default", &table)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "table `default`.`{table}`, column `t`: unsupported type `Tuple(UInt8, String)`: \
                 Tuple is not supported"
            )
        );
        client
            .query(&format!("DROP TABLE {table}"))
            .execute()
            .await
            .unwrap();
    }

    #[test]
    fn changes_between_schemas_are_named() {
        let rows = |list: &[(&str, &str)]| {
            TableSchema::from_rows(
                "db",
                "t",
                list.iter()
                    .map(|(n, t)| (n.to_string(), t.to_string(), String::new()))
                    .collect(),
            )
            .unwrap()
        };
        let old = rows(&[("id", "UInt64"), ("x", "Int32"), ("gone", "String")]);
        let new = rows(&[("id", "UInt64"), ("x", "Int64"), ("extra", "String")]);
        let changes = new.changes_since(&old);
        assert!(changes.contains("added extra String"), "{changes}");
        assert!(changes.contains("dropped gone"), "{changes}");
        assert!(changes.contains("x: Int32"), "{changes}");
        assert_eq!(old.changes_since(&old.clone()), "");
    }
}
