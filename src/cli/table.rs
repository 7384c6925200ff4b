//! Plain aligned tables, as kubectl prints them: an upper-case header line,
//! columns padded to their widest cell and three spaces apart, no borders.

/// Something that is one line of a table.
pub trait Row {
    /// The column headers, upper case.
    const HEADERS: &'static [&'static str];
    /// The cells, one per header.
    fn cells(&self) -> Vec<String>;
}

const GAP: &str = "   ";

/// The rows under their headers. The last column is not padded, so no line
/// ends in blanks.
pub fn render<R: Row>(rows: &[R]) -> String {
    let lines: Vec<Vec<String>> =
        std::iter::once(R::HEADERS.iter().map(|h| h.to_string()).collect())
            .chain(rows.iter().map(Row::cells))
            .collect();
    let mut widths = vec![0; R::HEADERS.len()];
    for line in &lines {
        for (width, cell) in widths.iter_mut().zip(line) {
            *width = (*width).max(cell.chars().count());
        }
    }
    lines
        .iter()
        .map(|line| {
            let mut out = String::new();
            for (n, (cell, width)) in line.iter().zip(&widths).enumerate() {
                if n > 0 {
                    out.push_str(GAP);
                }
                out.push_str(cell);
                if n + 1 < line.len() {
                    let pad = width.saturating_sub(cell.chars().count());
                    out.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.trim_end().to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A size in GiB as Kubernetes quantities spell it: `1500Gi`.
pub fn gib(value: u64) -> String {
    format!("{value}Gi")
}

/// An absent value, as kubectl shows one.
pub const NONE: &str = "-";

#[cfg(test)]
mod tests {
    use super::*;

    struct Pet(&'static str, u64);

    impl Row for Pet {
        const HEADERS: &'static [&'static str] = &["NAME", "SIZE", "NOTE"];
        fn cells(&self) -> Vec<String> {
            vec![self.0.to_string(), gib(self.1), NONE.to_string()]
        }
    }

    #[test]
    fn columns_align_on_the_widest_cell() {
        let table = render(&[Pet("a", 1500), Pet("longer-name", 7)]);
        assert_eq!(
            table,
            "NAME          SIZE     NOTE\n\
             a             1500Gi   -\n\
             longer-name   7Gi      -"
        );
    }

    #[test]
    fn an_empty_table_is_its_header() {
        assert_eq!(render::<Pet>(&[]), "NAME   SIZE   NOTE");
    }

    #[test]
    fn no_line_ends_in_blanks() {
        struct Gap;
        impl Row for Gap {
            const HEADERS: &'static [&'static str] = &["A", "LAST"];
            fn cells(&self) -> Vec<String> {
                vec!["x".into(), String::new()]
            }
        }
        assert_eq!(render(&[Gap]), "A   LAST\nx");
    }
}
