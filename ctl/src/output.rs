//! Output: tables for people (the default), JSON and YAML for scripts, as
//! `kubectl -o` does.

use serde::Serialize;

use crate::Error;

/// `-o FORMAT`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns.
    #[default]
    Table,
    /// JSON (one document).
    Json,
    /// YAML (one document).
    Yaml,
}

/// A command's result: serialisable, and printable as text.
pub trait Render: Serialize {
    /// The text shown by default.
    fn render(&self) -> String;
}

/// The result in `format`, ending with a newline.
pub fn emit<T: Render>(format: Format, value: &T) -> Result<String, Error> {
    let mut text = match format {
        Format::Table => value.render(),
        Format::Json => {
            serde_json::to_string_pretty(value).map_err(|e| Error::Encode(e.to_string()))?
        }
        Format::Yaml => serde_norway::to_string(value).map_err(|e| Error::Encode(e.to_string()))?,
    };
    if !text.ends_with('\n') {
        text.push('\n');
    }
    Ok(text)
}

/// Columns aligned with two spaces between them, headers in capitals (as
/// `kubectl get` prints them); the last column is not padded.
#[derive(Debug, Clone, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(headers: &[&str]) -> Self {
        Self {
            headers: headers.iter().map(|h| h.to_uppercase()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (missing cells are empty, extra cells are dropped).
    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) -> &mut Self {
        let mut row: Vec<String> = cells.into_iter().map(Into::into).collect();
        row.resize(self.headers.len(), String::new());
        self.rows.push(row);
        self
    }

    /// Whether it has no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The text, each line indented by `indent` spaces.
    pub fn render_indented(&self, indent: usize) -> String {
        let n = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.headers).chain(&self.rows) {
            out.push_str(&" ".repeat(indent));
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                line.push_str(cell);
                if i + 1 < n {
                    line.push_str(&" ".repeat(widths[i] - cell.chars().count() + 2));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    /// The text.
    pub fn render(&self) -> String {
        self.render_indented(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Thing {
        name: String,
        count: u64,
    }

    impl Render for Thing {
        fn render(&self) -> String {
            let mut t = Table::new(&["name", "count"]);
            t.row([self.name.clone(), self.count.to_string()]);
            t.render()
        }
    }

    #[test]
    fn tables_align_columns_and_trim_the_last() {
        let mut t = Table::new(&["table", "name", "flows"]);
        t.row(["0", "CLASSIFIER", "12"]);
        t.row(["31", "SERVICE_LB", ""]);
        assert_eq!(
            t.render(),
            "TABLE  NAME        FLOWS\n0      CLASSIFIER  12\n31     SERVICE_LB\n"
        );
        assert_eq!(
            t.render_indented(2).lines().next(),
            Some("  TABLE  NAME        FLOWS")
        );
    }

    #[test]
    fn every_format_prints_the_same_value() {
        let v = Thing {
            name: "web".into(),
            count: 3,
        };
        assert_eq!(emit(Format::Table, &v).unwrap(), "NAME  COUNT\nweb   3\n");
        let json: serde_json::Value =
            serde_json::from_str(&emit(Format::Json, &v).unwrap()).unwrap();
        assert_eq!(json["count"], 3);
        assert_eq!(emit(Format::Yaml, &v).unwrap(), "name: web\ncount: 3\n");
    }
}
