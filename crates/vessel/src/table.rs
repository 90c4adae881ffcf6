//! The tables the CLI's listing verbs print (`list`, `top`, `net ports`, `net rule list`,
//! `sched`): each column as wide as its widest cell, header included, so a long domain name
//! (names may have 32 characters) moves the columns after it instead of misaligning them;
//! cells are separated by at least two spaces, so columns split on whitespace.

/// Where a column's cells sit in its width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    /// Text: names, states.
    Left,
    /// Figures.
    Right,
}

/// A table under construction: headers and their alignment, then rows of cells.
#[derive(Debug)]
pub struct Table {
    columns: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these columns and no rows.
    pub fn new(columns: &[(&'static str, Align)]) -> Self {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row: one cell per column (missing cells are empty, extra ones dropped).
    pub fn row(&mut self, cells: Vec<String>) {
        let mut cells = cells;
        cells.resize(self.columns.len(), String::new());
        self.rows.push(cells);
    }

    /// The table as text, one line per row after the header line, each ending in a newline
    /// and none in trailing spaces.
    pub fn render(&self) -> String {
        let widths: Vec<usize> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, (header, _))| {
                self.rows
                    .iter()
                    .map(|r| r[i].chars().count())
                    .chain([header.chars().count()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        let header: Vec<String> = self.columns.iter().map(|(h, _)| h.to_string()).collect();
        for cells in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in cells.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                let pad = widths[i].saturating_sub(cell.chars().count());
                match self.columns[i].1 {
                    Align::Left => {
                        line.push_str(cell);
                        line.push_str(&" ".repeat(pad));
                    }
                    Align::Right => {
                        line.push_str(&" ".repeat(pad));
                        line.push_str(cell);
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_take_the_width_of_their_widest_cell() {
        let mut t = Table::new(&[
            ("ID", Align::Right),
            ("NAME", Align::Left),
            ("CPU(s)", Align::Right),
        ]);
        let long = "a-domain-name-of-32-characters-x";
        assert_eq!(long.len(), 32);
        t.row(vec!["1".into(), "web".into(), "0.5".into()]);
        t.row(vec!["12".into(), long.into(), "1234.5".into()]);
        let text = t.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], format!("ID  NAME{}  CPU(s)", " ".repeat(28)));
        assert_eq!(lines[1], format!(" 1  web{}     0.5", " ".repeat(29)));
        assert_eq!(lines[2], format!("12  {long}  1234.5"));
        // Every column starts at the same offset on every line.
        let cpu = lines[0].find("CPU(s)").unwrap();
        assert!(lines.iter().all(|l| l.len() == cpu + "CPU(s)".len()));
    }

    #[test]
    fn a_last_text_column_leaves_no_trailing_spaces_and_short_rows_are_padded() {
        let mut t = Table::new(&[("PORT", Align::Left), ("MACS", Align::Left)]);
        t.row(vec!["vtap0".into()]);
        t.row(vec!["a-eth0".into(), "02:00:00:00:00:01".into()]);
        let text = t.render();
        assert_eq!(text, "PORT    MACS\nvtap0\na-eth0  02:00:00:00:00:01\n");
    }
}
