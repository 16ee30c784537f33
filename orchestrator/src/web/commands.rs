//! Commands from the web console: offered only when it was started with `--commands`, sent only
//! after a confirmation page that names the command and every archive it will reach, and
//! answered with each archive's outcome. A command changes archives, so it is a POST from this
//! console's own form: it must carry the form's token (random per start, never in a URL) and,
//! when the browser says where it comes from, this console's own origin; a page elsewhere can
//! neither send one nor read the token.

use std::collections::BTreeMap;

use maud::{Markup, html};
use psp_rpc::client::CommandSpec;

use super::WebConsole;
use crate::console::Options;
use crate::fanout::CommandResults;
use crate::selection::Selector;

/// The largest form accepted.
pub const MAX_FORM_BYTES: usize = 16 * 1024;

/// The commands the form offers (each with what its arguments need).
const OFFERED: [&str; 3] = ["ping", "snapshot", "seal"];

/// A command form as posted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Form {
    fields: BTreeMap<String, String>,
}

impl Form {
    /// Reads an `application/x-www-form-urlencoded` body.
    pub fn parse(body: &str) -> Form {
        Form {
            fields: body
                .split('&')
                .filter_map(|pair| pair.split_once('='))
                .map(|(k, v)| (super::percent_decode(k), super::percent_decode(v)))
                .collect(),
        }
    }

    fn get(&self, name: &str) -> &str {
        self.fields.get(name).map_or("", |v| v.trim())
    }

    /// Whether the form carries `token`.
    pub fn carries(&self, token: &str) -> bool {
        !token.is_empty() && self.get("token") == token
    }

    /// Whether this is the confirmed form (the second post).
    pub fn confirmed(&self) -> bool {
        self.get("confirm") == "yes"
    }

    /// The archives it selects: by `label` (key=value, comma-separated), or all.
    pub fn selector(&self) -> Result<Selector, String> {
        let labels = self.get("labels");
        if labels.is_empty() {
            return Ok(Selector::All);
        }
        labels
            .split(',')
            .map(|l| {
                l.split_once('=')
                    .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                    .ok_or_else(|| format!("labels {l:?}: expected key=value"))
            })
            .collect::<Result<_, _>>()
            .map(Selector::Labels)
    }

    /// The command it asks for, checked as the CLI checks it.
    pub fn command(&self) -> Result<CommandSpec, String> {
        let name = self.get("name");
        if !OFFERED.contains(&name) {
            return Err(format!("{name:?} is not a command this page offers"));
        }
        let key = self.get("idempotency_key");
        if !(16..=64).contains(&key.len()) {
            return Err(format!(
                "the idempotency key is {} bytes; use 16 to 64",
                key.len()
            ));
        }
        let optional = |field: &str| Some(self.get(field)).filter(|v| !v.is_empty());
        let arguments = crate::operate::command_arguments(
            name,
            None,
            optional("period").filter(|_| name == "seal"),
            optional("snapshot_name").filter(|_| name == "snapshot"),
        )?;
        Ok(CommandSpec {
            name: name.to_owned(),
            collection: self.get("collection").to_owned(),
            idempotency_key: key.as_bytes().to_vec(),
            arguments,
        })
    }

    /// Every field again, hidden, with `confirm=yes`: the confirmation page's form.
    fn hidden(&self) -> Markup {
        html! {
            @for (k, v) in &self.fields {
                @if k != "confirm" { input type="hidden" name=(k) value=(v); }
            }
            input type="hidden" name="confirm" value="yes";
        }
    }
}

/// A fresh idempotency key for the form (the operator may keep or change it).
fn fresh_key() -> String {
    psp_core::capability::CapabilityId::random()
        .map(|id| format!("web-{}", hex::encode(id.0)))
        .unwrap_or_default()
}

/// The command form.
pub fn form(web: &WebConsole, token: &str) -> Markup {
    let content = html! {
        h1 { "Send a command" }
        p { "Each selected archive applies it once: sending it again with the same idempotency key "
            "is a replay everywhere. A confirmation page comes first." }
        form method="post" action="/command" class="command" {
            input type="hidden" name="token" value=(token);
            p { label { "Command " select name="name" {
                @for name in OFFERED { option value=(name) { (name) } }
            } } }
            p { label { "Collection (empty: archive-wide) " input type="text" name="collection"; } }
            p { label { "Period, for seal " input type="text" name="period" placeholder="2026-10"; } }
            p { label { "Snapshot name, for snapshot " input type="text" name="snapshot_name" placeholder="nightly-2026-11-28"; } }
            p { label { "Archives by label (empty: all) " input type="text" name="labels" placeholder="entity=property"; } }
            p { label { "Idempotency key " input type="text" name="idempotency_key" value=(fresh_key()) size="48"; } }
            p { button type="submit" { "Review" } }
        }
    };
    super::pages::layout(web, "Send a command", content)
}

/// The confirmation page: the command and every archive it will reach.
pub fn confirm(
    web: &WebConsole,
    form: &Form,
    command: &CommandSpec,
    archives: &[String],
) -> Markup {
    let content = html! {
        h1 { "Confirm the command" }
        p { "Apply " strong { (command.name) } " to these " (archives.len()) " archives, "
            "with idempotency key " code { (String::from_utf8_lossy(&command.idempotency_key)) } "?" }
        ul class="arguments" {
            li { "collection: " (if command.collection.is_empty() { "(archive-wide)" } else { command.collection.as_str() }) }
            @if !form.get("period").is_empty() { li { "period: " (form.get("period")) } }
            @if !form.get("snapshot_name").is_empty() { li { "snapshot name: " (form.get("snapshot_name")) } }
        }
        ul class="archives" { @for a in archives { li { (a) } } }
        form method="post" action="/command" {
            (form.hidden())
            button type="submit" { "Apply to " (archives.len()) " archives" }
            " " a href="/" { "Cancel" }
        }
    };
    super::pages::layout(web, "Confirm the command", content)
}

/// Each archive's outcome of a command.
pub fn outcomes(web: &WebConsole, command: &CommandSpec, results: &CommandResults) -> Markup {
    let content = html! {
        h1 { "Command " (command.name) }
        table class="outcomes" id="command-outcomes" {
            thead { tr { th { "archive" } th { "outcome" } th { "detail" } } }
            tbody {
                @for (o, a) in results {
                    tr {
                        td { (crate::render::clean(&o.archive)) }
                        @match a {
                            Some(a) => {
                                td class="status-ok" { (if a.applied { "applied" } else { "replayed" }) }
                                td { (crate::render::clean(&a.message)) }
                            }
                            None => {
                                td class="status-bad" { (o.status.word()) }
                                td { (super::pages::detail(&o.status)) }
                            }
                        }
                    }
                }
            }
        }
    };
    super::pages::layout(web, "Command outcomes", content)
}

/// Runs a confirmed command form.
pub async fn run(web: &WebConsole, form: &Form) -> Result<(CommandSpec, CommandResults), String> {
    let command = form.command()?;
    let selector = form.selector()?;
    let results = web
        .console()
        .await?
        .command(&selector, &web.grant, &command, Options::default())
        .await
        .map_err(|e| e.to_string())?;
    Ok((command, results))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_form_is_read_checked_and_carried_to_its_confirmation() {
        let form = Form::parse(
            "token=t0k&name=snapshot&snapshot_name=nightly%2D1&labels=entity%3Dproperty&idempotency_key=web-0123456789abcdef",
        );
        assert!(form.carries("t0k") && !form.carries("other") && !form.carries(""));
        assert!(!form.confirmed());
        let command = form.command().unwrap();
        assert_eq!(command.name, "snapshot");
        assert!(!command.arguments.is_empty());
        assert_eq!(
            form.selector().unwrap(),
            Selector::Labels([("entity".to_owned(), "property".to_owned())].into())
        );
        assert!(
            Form::parse("name=drop-everything&idempotency_key=web-0123456789abcdef")
                .command()
                .is_err()
        );
        assert!(
            Form::parse("name=ping&idempotency_key=short")
                .command()
                .is_err()
        );
        let hidden = form.hidden().into_string();
        assert!(
            hidden.contains("name=\"confirm\" value=\"yes\""),
            "{hidden}"
        );
    }
}
