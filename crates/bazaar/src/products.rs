//! `bazaar products ...`: a client of the catalog, through the gateway like any other client.

use std::io::Read;
use std::path::Path;

use anyhow::Context;
use serde_json::Value;

use crate::cli::{Global, ProductsArgs, ProductsCommand};
use crate::output;
use crate::session;

pub async fn products(global: Global, args: ProductsArgs) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let base = session::gateway_key(&global.gateway);
    let request = match &args.command {
        ProductsCommand::List {
            q,
            category,
            sort,
            page,
            per_page,
        } => {
            let mut query: Vec<(&str, String)> = vec![
                ("page", page.to_string()),
                ("per_page", per_page.to_string()),
            ];
            if let Some(q) = q {
                query.push(("q", q.clone()));
            }
            if let Some(c) = category {
                query.push(("category", c.clone()));
            }
            if let Some(s) = sort {
                query.push(("sort", s.clone()));
            }
            http.get(format!("{base}/api/v1/products")).query(&query)
        }
        ProductsCommand::Get { id } => http.get(format!("{base}/api/v1/products/{}", encode(id))),
        ProductsCommand::Categories => http.get(format!("{base}/api/v1/categories")),
        ProductsCommand::Create { file } => http
            .post(format!("{base}/api/v1/products"))
            .header("content-type", "application/json")
            .body(read_input(file)?),
        ProductsCommand::Update { id, file } => http
            .put(format!("{base}/api/v1/products/{}", encode(id)))
            .header("content-type", "application/json")
            .body(read_input(file)?),
        ProductsCommand::Delete { id } => {
            http.delete(format!("{base}/api/v1/products/{}", encode(id)))
        }
    };
    // Reading the catalogue is public; writes need an admin, signed in like any user.
    let writes = matches!(
        args.command,
        ProductsCommand::Create { .. }
            | ProductsCommand::Update { .. }
            | ProductsCommand::Delete { .. }
    );
    let token = if writes {
        Some(session::user_token(&global).await?)
    } else {
        global.token.clone()
    };
    let request = match &token {
        Some(token) => request.bearer_auth(token),
        None => request,
    };
    let response = request
        .send()
        .await
        .with_context(|| format!("cannot reach the gateway at {base} (is bazaar up?)"))?;
    if !response.status().is_success() {
        return Err(output::problem_error(response).await);
    }
    if matches!(args.command, ProductsCommand::Delete { .. }) {
        if !global.json {
            println!("deleted");
        }
        return Ok(());
    }
    let body: Value = response
        .json()
        .await
        .context("the gateway sent invalid JSON")?;
    if global.json {
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(());
    }
    match args.command {
        ProductsCommand::List { .. } => print_list(&body),
        ProductsCommand::Categories => print_categories(&body),
        _ => print_product(&body),
    }
    Ok(())
}

pub(crate) fn encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn read_input(file: &Path) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    if file.as_os_str() == "-" {
        std::io::stdin().read_to_end(&mut bytes)?;
    } else {
        bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    }
    Ok(bytes)
}

fn price(product: &Value) -> String {
    output::money(
        product["price"]["amount_minor"]
            .as_i64()
            .unwrap_or_default(),
        product["price"]["currency"].as_str().unwrap_or("?"),
    )
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn print_list(body: &Value) {
    let rows: Vec<Vec<String>> = body["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|p| {
                    vec![
                        text(&p["id"]),
                        text(&p["name"]),
                        text(&p["category"]),
                        price(p),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    print!(
        "{}",
        output::table(&["ID", "NAME", "CATEGORY", "PRICE"], &rows)
    );
    println!(
        "\npage {} of {} ({} products)",
        text(&body["page"]),
        text(&body["total_pages"]),
        text(&body["total"])
    );
}

fn print_categories(body: &Value) {
    let rows: Vec<Vec<String>> = body
        .as_array()
        .or_else(|| body["items"].as_array())
        .map(|items| {
            items
                .iter()
                .map(|c| {
                    vec![
                        text(&c["slug"]),
                        text(&c["name"]),
                        text(&c["product_count"]),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    print!("{}", output::table(&["SLUG", "NAME", "PRODUCTS"], &rows));
}

fn print_product(p: &Value) {
    println!("{}  ({})", text(&p["name"]), text(&p["id"]));
    println!("  sku        {}", text(&p["sku"]));
    println!("  category   {}", text(&p["category"]));
    println!("  price      {}", price(p));
    if let Some(description) = p["description"].as_str() {
        println!("  {description}");
    }
    if let Some(attributes) = p["attributes"].as_object() {
        for (k, v) in attributes {
            println!("  {k:<10} {}", text(v));
        }
    }
}
