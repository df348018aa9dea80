//! Output formats shared by the subcommands.

/// How a command prints its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns for people.
    Table,
    /// One JSON document for programs (schema documented per command).
    Json,
}

/// A table in sondectl's look: no borders, left-aligned columns, like kubectl.
pub fn table(header: &[&str]) -> comfy_table::Table {
    let mut table = comfy_table::Table::new();
    table
        .load_preset(comfy_table::presets::NOTHING)
        .set_content_arrangement(comfy_table::ContentArrangement::Disabled)
        .set_header(header.iter().copied());
    table
}

/// comfy-table pads every cell by one space: drop the pad at both ends of each line.
pub fn trim_lines(table: &comfy_table::Table) -> String {
    table
        .lines()
        .map(|line| line.trim().to_owned())
        .collect::<Vec<_>>()
        .join("\n")
}
