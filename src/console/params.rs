//! Query strings and form bodies: typed values with errors naming the
//! parameter, and URL encoding for the links pages make.

use bytes::Bytes;

use super::ConsoleError;
use crate::fields::FieldPairs;
use crate::redis;
use crate::schedule::spec;

/// Most entries one page or API answer lists.
pub(crate) const MAX_COUNT: usize = 1000;

/// A query string or `application/x-www-form-urlencoded` body, in order
/// (a name may repeat, e.g. `where`).
#[derive(Debug, Default, Clone)]
pub(crate) struct Params(Vec<(String, String)>);

fn bad(field: &str, message: impl Into<String>) -> ConsoleError {
    ConsoleError::BadRequest {
        field: field.to_string(),
        message: message.into(),
    }
}

impl Params {
    pub(crate) fn parse(text: Option<&str>) -> Params {
        Params(serde_urlencoded::from_str(text.unwrap_or("")).unwrap_or_default())
    }

    /// The first non-empty value of `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, v)| k == name && !v.trim().is_empty())
            .map(|(_, v)| v.as_str())
    }

    /// Every (name, value), in order.
    pub(crate) fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub(crate) fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, v)| k == name && !v.trim().is_empty())
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn required(&self, name: &str) -> Result<&str, ConsoleError> {
        self.get(name)
            .ok_or_else(|| bad(name, format!("`{name}` is required")))
    }

    /// A count between 1 and `max`, `default` when absent.
    pub(crate) fn count(
        &self,
        name: &str,
        default: usize,
        max: usize,
    ) -> Result<usize, ConsoleError> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => match v.trim().parse::<usize>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => Err(bad(
                    name,
                    format!("`{name}` must be a number from 1 to {max}"),
                )),
            },
        }
    }

    /// A stream entry id (`ms-seq` or `ms`), if given.
    pub(crate) fn id(&self, name: &str) -> Result<Option<String>, ConsoleError> {
        self.get(name).map(|v| check_id(name, v.trim())).transpose()
    }

    /// A time (RFC 3339 or Unix ms), if given.
    pub(crate) fn time(&self, name: &str) -> Result<Option<u64>, ConsoleError> {
        self.get(name)
            .map(|v| spec::parse_time(v).map_err(|m| bad(name, m)))
            .transpose()
    }

    /// Every `where=field=value` as a filter.
    pub(crate) fn filter(&self) -> Result<FieldFilter, ConsoleError> {
        FieldFilter::parse(self.all("where"), "where")
    }
}

/// Checks a stream entry id: `ms-seq` or `ms`, digits only.
pub(crate) fn check_id(field: &str, id: &str) -> Result<String, ConsoleError> {
    if redis::parse_id(id.as_bytes()).is_some() && !id.is_empty() && !id.starts_with('-') {
        Ok(id.to_string())
    } else {
        Err(bad(
            field,
            format!("{id:?} is not a stream entry id (`ms-seq` or `ms`)"),
        ))
    }
}

/// `a=1&b=x y` with every value percent-encoded: for links and redirects.
pub(crate) fn encode(pairs: &[(&str, &str)]) -> String {
    serde_urlencoded::to_string(pairs).unwrap_or_default()
}

/// `field=value` conditions an entry must all meet (exact, byte for byte).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct FieldFilter(pub Vec<(Bytes, Bytes)>);

impl FieldFilter {
    /// Parses `field=value` items; `key` names them in errors.
    pub(crate) fn parse<'a>(
        items: impl IntoIterator<Item = &'a str>,
        key: &str,
    ) -> Result<FieldFilter, ConsoleError> {
        let mut out = Vec::new();
        for item in items {
            let (k, v) = item
                .split_once('=')
                .filter(|(k, _)| !k.trim().is_empty())
                .ok_or_else(|| bad(key, format!("{item:?}: expected field=value")))?;
            out.push((
                Bytes::copy_from_slice(k.trim().as_bytes()),
                Bytes::copy_from_slice(v.as_bytes()),
            ));
        }
        Ok(FieldFilter(out))
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn matches(&self, fields: &(impl FieldPairs + ?Sized)) -> bool {
        self.0
            .iter()
            .all(|(k, v)| fields.pairs().any(|(fk, fv)| fk == k && fv == v))
    }

    /// As written: `a=1, b=2`.
    #[cfg(test)]
    pub(crate) fn describe(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| {
                format!(
                    "{}={}",
                    String::from_utf8_lossy(k),
                    String::from_utf8_lossy(v)
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_parameter() {
        let p = Params::parse(Some("count=0&from=abc&where=novalue&since=soon"));
        let field = |e: ConsoleError| match e {
            ConsoleError::BadRequest { field, .. } => field,
            other => panic!("{other}"),
        };
        assert_eq!(field(p.count("count", 10, 100).unwrap_err()), "count");
        assert_eq!(field(p.id("from").unwrap_err()), "from");
        assert_eq!(field(p.filter().unwrap_err()), "where");
        assert_eq!(field(p.time("since").unwrap_err()), "since");
        assert_eq!(field(p.required("stream").unwrap_err()), "stream");
    }

    #[test]
    fn filters_match_every_condition_exactly() {
        let p = Params::parse(Some("where=task_for%3Dreport&where=x%3D%3Cb%3E"));
        let f = p.filter().unwrap();
        let fields = |pairs: &[(&str, &str)]| -> Vec<(Bytes, Bytes)> {
            pairs
                .iter()
                .map(|(k, v)| (Bytes::from(k.to_string()), Bytes::from(v.to_string())))
                .collect()
        };
        assert!(f.matches(&fields(&[("task_for", "report"), ("x", "<b>")])));
        assert!(!f.matches(&fields(&[("task_for", "report")])));
        assert!(!f.matches(&fields(&[("task_for", "reports"), ("x", "<b>")])));
        assert_eq!(f.describe(), "task_for=report, x=<b>");
    }

    #[test]
    fn ids_and_links() {
        assert_eq!(check_id("from", "5-1").unwrap(), "5-1");
        assert_eq!(check_id("from", "1700000000000").unwrap(), "1700000000000");
        assert!(check_id("from", "5-x").is_err());
        assert!(check_id("from", "").is_err());
        assert_eq!(
            encode(&[("name", "jobs:{0} &x")]),
            "name=jobs%3A%7B0%7D+%26x"
        );
    }
}
