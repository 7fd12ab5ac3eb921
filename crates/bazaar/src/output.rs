//! Terminal output helpers shared by the client commands.

/// Renders a left-aligned table with a header row, two spaces between columns.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut text = String::from("  ");
        for (i, cell) in cells.iter().enumerate() {
            text.push_str(cell);
            if i + 1 < cells.len() {
                let pad = widths[i] - cell.chars().count() + 2;
                text.push_str(&" ".repeat(pad));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// Formats integer minor units as a decimal amount with its currency, e.g. `24.99 USD`.
pub fn money(amount_minor: i64, currency: &str) -> String {
    let sign = if amount_minor < 0 { "-" } else { "" };
    let abs = amount_minor.unsigned_abs();
    format!("{sign}{}.{:02} {currency}", abs / 100, abs % 100)
}

/// Prints a problem document from a failed call as an error.
pub async fn problem_error(response: reqwest::Response) -> anyhow::Error {
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    match serde_json::from_str::<bazaar_kit::problem::Problem>(&body) {
        Ok(problem) => {
            let mut message = format!("{} {}", problem.status, problem.code);
            if let Some(field) = problem.field {
                message.push_str(&format!(" (field `{field}`)"));
            }
            if let Some(detail) = problem.detail {
                message.push_str(&format!(": {detail}"));
            }
            anyhow::anyhow!(message)
        }
        Err(_) => anyhow::anyhow!("{status}: {body}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_money_formats() {
        let rendered = table(
            &["A", "BB"],
            &[
                vec!["long cell".into(), "x".into()],
                vec!["s".into(), "y".into()],
            ],
        );
        assert_eq!(
            rendered,
            "  A          BB\n  long cell  x\n  s          y\n"
        );
        assert_eq!(money(2499, "USD"), "24.99 USD");
        assert_eq!(money(-5, "EUR"), "-0.05 EUR");
    }
}
