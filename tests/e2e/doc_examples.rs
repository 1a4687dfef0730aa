//! The docs are true (issue "the first hour" §8): every shell and SQL example of
//! `README.md` and `docs/*.md` runs, or says in the markdown why it does not.
//!
//! Every fenced block tagged `sh`, `bash`, `shell`, `console` or `sql` needs a fate, an
//! HTML comment ending on the line right before its fence:
//!
//! - `<!-- example: skip (reason) -->`: not run here (Docker, a release build, the test
//!   suite itself…); the reason is required.
//! - `<!-- example: fragment (reason) -->` (SQL): a syntax template or a piece of a
//!   query that cannot be planned alone; the reason is required.
//! - `<!-- example: check … -->` (SQL): the block, with the comment's further lines
//!   around it (before it, or around a line `{block}`: the tables a fragment reads,
//!   an `INSERT` for a table declaration), is written to `sql/` of a copy of the
//!   repository's layout and must pass `tributary check`. Lines `env KEY=VALUE` set a
//!   variable, `toml LINE` go to the copy's `tributary.toml`, `file PATH: LINE` write a
//!   file the example reads (`file DIR/` makes a directory).
//! - `<!-- example: refused CODE … -->` (SQL): the same, but `tributary check` must
//!   refuse it with `error[CODE]`.
//! - `<!-- example: run … -->` (shell): each command line (joined over `\`, without
//!   `$ ` prompts and `# comment` tails) runs with `bash -c` in the layout copy, with
//!   the built `tributary` first on `PATH` (and `curl` failing on an HTTP error status),
//!   and must exit 0 within a minute. Options,
//!   one a line in the comment:
//!   - `serve PREFIX: URL`: lines starting with PREFIX run until stopped: started,
//!     waited for until URL answers 200, left running while the next lines run, then
//!     stopped with SIGTERM (exit 0 required) when the next line with the same
//!     PREFIX starts or the block ends;
//!   - `beside COMMAND: URL`: COMMAND, not shown in the block, serves the block the
//!     same way (started first, SIGTERM at the end);
//!   - `exit N: PREFIX`: lines starting with PREFIX must exit with N;
//!   - `skip TEXT: reason`: lines containing TEXT are not run;
//!   - `env KEY=VALUE`: set for every command of the block.
//!
//! The addresses the docs show are the defaults; the test gives each run ports of its
//! own (admin endpoint, schema registry) and the test servers (`TRIBUTARY_TEST_KAFKA`
//! for `127.0.0.1:19092`, `TRIBUTARY_TEST_DYNAMODB`), and substitutes them in commands,
//! URLs and SQL.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

const SHELL: [&str; 4] = ["sh", "bash", "shell", "console"];

#[derive(Debug)]
struct Block {
    file: String,
    line: usize,
    lang: String,
    body: String,
    /// The directive's first line (after `example:`) and its further lines.
    fate: Option<(String, Vec<String>)>,
}

impl Block {
    fn at(&self) -> String {
        format!("{}:{}", self.file, self.line)
    }
}

fn blocks(root: &Path) -> Vec<Block> {
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    let mut out = Vec::new();
    for path in files {
        let name = path.strip_prefix(root).unwrap().display().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let mut i = 0;
        while i < lines.len() {
            let Some(tag) = lines[i].trim_start().strip_prefix("```") else {
                i += 1;
                continue;
            };
            let lang = tag.trim().to_string();
            let start = i;
            let mut body = String::new();
            i += 1;
            while i < lines.len() && !lines[i].trim_start().starts_with("```") {
                body.push_str(lines[i]);
                body.push('\n');
                i += 1;
            }
            i += 1;
            if !SHELL.contains(&lang.as_str()) && lang != "sql" {
                continue;
            }
            out.push(Block {
                file: name.clone(),
                line: start + 1,
                lang,
                body,
                fate: directive(&lines[..start]),
            });
        }
    }
    out
}

/// The `<!-- example: … -->` comment ending on the last of `before`, if any.
fn directive(before: &[&str]) -> Option<(String, Vec<String>)> {
    let last = before.len().checked_sub(1)?;
    if !before[last].trim_end().ends_with("-->") {
        return None;
    }
    let open = (0..=last)
        .rev()
        .find(|&j| before[j].trim_start().starts_with("<!--"))?;
    let mut text: Vec<String> = before[open..=last].iter().map(|l| l.to_string()).collect();
    let first = text[0]
        .trim_start()
        .strip_prefix("<!--")?
        .trim()
        .strip_prefix("example:")?
        .to_string();
    text.remove(0);
    let mut head = first;
    if let Some(h) = head.strip_suffix("-->") {
        head = h.trim().to_string();
    } else if let Some(l) = text.last_mut() {
        *l = l.trim_end().strip_suffix("-->").unwrap_or(l).to_string();
    }
    let rest = text.into_iter().filter(|l| !l.trim().is_empty()).collect();
    Some((head.trim().to_string(), rest))
}

/// The reason in `skip (reason)`, if non-empty.
fn reason(head: &str, word: &str) -> Option<String> {
    let r = head.strip_prefix(word)?.trim();
    let r = r.strip_prefix('(')?.strip_suffix(')')?.trim();
    (!r.is_empty()).then(|| r.to_string())
}

struct Env {
    root: PathBuf,
    admin: String,
    registry: String,
    kafka: String,
    dynamodb: String,
    /// Before every DynamoDB table name: this run's own tables on the shared server.
    table_prefix: String,
}

impl Env {
    /// The documented addresses replaced by this run's.
    fn substitute(&self, s: &str) -> String {
        s.replace("127.0.0.1:9464", &self.admin)
            .replace("localhost:9464", &self.admin)
            .replace("127.0.0.1:8081", &self.registry)
            .replace("127.0.0.1:19092", &self.kafka)
    }

    fn command(&self, dir: &Path, line: &str, extra: &[(String, String)]) -> Command {
        let bin_dir = Path::new(bin()).parent().unwrap();
        let path = format!(
            "{}:{}",
            bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut c = Command::new("bash");
        for (k, _) in std::env::vars() {
            if k.starts_with("TRIBUTARY") || k == "TOKEN" {
                c.env_remove(k);
            }
        }
        c.arg("-c")
            .arg(line)
            .current_dir(dir)
            .env("PATH", path)
            .env("NO_COLOR", "1")
            .env("TRIBUTARY__ADMIN__LISTEN", &self.admin)
            .env("TRIBUTARY__REGISTRY__LISTEN", &self.registry)
            .env(
                "TRIBUTARY__REGISTRY__URL",
                format!("http://{}", self.registry),
            )
            .stdin(Stdio::null());
        c.env("TRIBUTARY__DYNAMODB__ENDPOINT", &self.dynamodb)
            .env("TRIBUTARY__DYNAMODB__TABLE_PREFIX", &self.table_prefix);
        for (k, v) in extra {
            c.env(k, v);
        }
        c
    }
}

/// A copy of the repository's layout: what the examples read.
fn layout(root: &Path) -> tempfile::TempDir {
    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap().flatten() {
            let target = to.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                copy_dir(&e.path(), &target);
            } else {
                std::fs::copy(e.path(), target).unwrap();
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    for sub in ["pipelines", "sql", "schemas"] {
        copy_dir(&root.join(sub), &dir.path().join(sub));
    }
    dir
}

/// `GET url` answers 200 (plain HTTP/1.0 over a socket, `http://host:port/path`).
fn answers_200(url: &str) -> bool {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let Ok(mut s) = std::net::TcpStream::connect(host) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") && &head[9..12] == b"200"
}

/// A command that runs until stopped; killed if the test fails while it lives.
struct Served {
    what: String,
    child: Child,
    log: PathBuf,
}

impl Served {
    fn start(
        env: &Env,
        dir: &Path,
        line: &str,
        url: &str,
        extra: &[(String, String)],
    ) -> Result<Served, String> {
        let n = std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
        let log = dir.join(format!("served-{n}.log"));
        let child = env
            .command(dir, &format!("exec {line}"), extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .map_err(|e| e.to_string())?;
        let mut s = Served {
            what: line.to_string(),
            child,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        while !answers_200(url) {
            if let Some(status) = s.child.try_wait().unwrap() {
                return Err(format!(
                    "`{line}` exited ({status}) before {url} answered:\n{}",
                    s.output()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "`{line}`: {url} did not answer 200 within 120 s:\n{}",
                    s.output()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(s)
    }

    fn output(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// SIGTERM; it must exit 0.
    fn stop(mut self) -> Result<(), String> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return if status.code() == Some(0) {
                    Ok(())
                } else {
                    Err(format!(
                        "`{}` exited {status} on SIGTERM:\n{}",
                        self.what,
                        self.output()
                    ))
                };
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "`{}` did not stop within 60 s of SIGTERM",
                    self.what
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The command lines of a shell block.
fn command_lines(body: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for raw in body.lines() {
        let line = raw.trim();
        let line = line.strip_prefix("$ ").unwrap_or(line);
        let line = strip_comment(line);
        if let Some(cont) = line.strip_suffix('\\') {
            pending.push_str(cont.trim_end());
            pending.push(' ');
            continue;
        }
        pending.push_str(line.trim());
        let full = std::mem::take(&mut pending);
        if !full.trim().is_empty() {
            out.push(full.trim().to_string());
        }
    }
    out
}

/// `cmd   # comment` → `cmd` (a `#` outside quotes, after a space or at the start).
fn strip_comment(line: &str) -> &str {
    let (mut single, mut double) = (false, false);
    let mut prev = ' ';
    for (i, c) in line.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double && prev.is_whitespace() => return line[..i].trim_end(),
            _ => {}
        }
        prev = c;
    }
    line
}

fn option_pair(opt: &str, word: &str) -> Option<(String, String)> {
    let rest = opt.trim().strip_prefix(word)?.trim();
    let (a, b) = rest.split_once(": ")?;
    Some((a.trim().to_string(), b.trim().to_string()))
}

fn run_shell(env: &Env, b: &Block, options: &[String]) -> Result<usize, String> {
    let dir = layout(&env.root);
    let d = dir.path();
    let mut serves = Vec::new();
    let mut besides = Vec::new();
    let mut exits = Vec::new();
    let mut skips = Vec::new();
    // curl fails on an HTTP error status, so that a refused request fails its example.
    write(&d.join(".curlrc"), "fail-with-body\n");
    let mut extra = vec![("CURL_HOME".to_string(), d.display().to_string())];
    for o in options {
        if let Some(p) = option_pair(o, "serve ") {
            serves.push(p);
        } else if let Some(p) = option_pair(o, "beside ") {
            besides.push(p);
        } else if let Some((code, prefix)) = option_pair(o, "exit ") {
            exits.push((
                code.parse::<i32>().map_err(|e| format!("{o}: {e}"))?,
                prefix,
            ));
        } else if let Some((prefix, why)) = option_pair(o, "skip ") {
            if why.is_empty() {
                return Err(format!("`{o}`: a skipped line needs a reason"));
            }
            skips.push(prefix);
        } else if let Some((k, v)) = o
            .trim()
            .strip_prefix("env ")
            .and_then(|kv| kv.split_once('='))
        {
            extra.push((k.trim().to_string(), env.substitute(v.trim())));
        } else {
            return Err(format!("unknown option `{o}`"));
        }
    }
    let mut running: Vec<(String, Served)> = Vec::new();
    for (cmd, url) in &besides {
        let s = Served::start(env, d, &env.substitute(cmd), &env.substitute(url), &extra)?;
        running.push((String::new(), s));
    }
    let mut ran = 0;
    for line in command_lines(&b.body) {
        if skips.iter().any(|p| line.contains(p.as_str())) {
            continue;
        }
        let cmd = env.substitute(&line);
        if let Some((prefix, url)) = serves.iter().find(|(p, _)| line.starts_with(p.as_str())) {
            if let Some(i) = running.iter().position(|(p, _)| p == prefix) {
                running.remove(i).1.stop()?;
            }
            let s = Served::start(env, d, &cmd, &env.substitute(url), &extra)?;
            running.push((prefix.clone(), s));
            ran += 1;
            continue;
        }
        let want = exits
            .iter()
            .find(|(_, p)| line.starts_with(p.as_str()))
            .map_or(0, |(c, _)| *c);
        let mut child = env
            .command(d, &cmd, &extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("`{line}` did not finish within 60 s"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let o = child.wait_with_output().unwrap();
        if o.status.code() != Some(want) {
            return Err(format!(
                "`{line}` exited {:?}, expected {want}:\n{}{}",
                o.status.code(),
                stdout(&o),
                stderr(&o)
            ));
        }
        ran += 1;
    }
    while let Some((_, s)) = running.pop() {
        s.stop()?;
    }
    Ok(ran)
}

fn check_sql(env: &Env, b: &Block, around: &[String], refused: Option<&str>) -> Result<(), String> {
    let dir = layout(&env.root);
    let d = dir.path();
    let mut sql = String::new();
    let mut placed = false;
    let mut extra = Vec::new();
    let mut toml = String::new();
    for l in around {
        if let Some((k, v)) = l
            .trim()
            .strip_prefix("env ")
            .and_then(|kv| kv.split_once('='))
        {
            extra.push((k.trim().to_string(), env.substitute(v.trim())));
        } else if let Some(t) = l.trim().strip_prefix("toml ") {
            toml.push_str(&env.substitute(t));
            toml.push('\n');
        } else if let Some(f) = l.trim().strip_prefix("file ") {
            let (path, content) = f.split_once(": ").unwrap_or((f, ""));
            if path.ends_with('/') {
                std::fs::create_dir_all(d.join(path)).unwrap();
            } else {
                write(&d.join(path), &format!("{content}\n"));
            }
        } else if l.trim() == "{block}" {
            sql.push_str(&b.body);
            placed = true;
        } else {
            sql.push_str(l);
            sql.push('\n');
        }
    }
    if !placed {
        sql.push_str(&b.body);
    }
    let name = format!(
        "{}_{}",
        b.file
            .trim_end_matches(".md")
            .replace(['/', '.'], "_")
            .to_lowercase(),
        b.line
    );
    if !toml.is_empty() {
        write(&d.join("tributary.toml"), &toml);
    }
    let file = write(
        &d.join("sql").join(format!("{name}.sql")),
        &env.substitute(&sql),
    );
    let o = env
        .command(d, &format!("tributary check {}", file.display()), &extra)
        .output()
        .unwrap();
    match refused {
        None if o.status.success() => Ok(()),
        None => Err(format!(
            "tributary check refused it ({:?}):\n{}\n--- checked:\n{sql}",
            o.status.code(),
            stderr(&o)
        )),
        Some(code) => {
            let err = stderr(&o);
            if !o.status.success() && err.contains(&format!("error[{code}]")) {
                Ok(())
            } else {
                Err(format!(
                    "expected error[{code}], got exit {:?}:\n{err}\n--- checked:\n{sql}",
                    o.status.code()
                ))
            }
        }
    }
}

#[test]
fn every_shell_and_sql_example_of_the_docs_runs_or_says_why_not() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let all = blocks(root);
    assert!(all.len() > 20, "only {} examples found", all.len());
    let env = Env {
        root: root.to_path_buf(),
        admin: format!("127.0.0.1:{}", crate::registry::free_port()),
        registry: format!("127.0.0.1:{}", crate::registry::free_port()),
        table_prefix: format!("doc_examples_{}_", std::process::id()),
        kafka: crate::kafka::bootstrap(),
        dynamodb: std::env::var("TRIBUTARY_TEST_DYNAMODB").unwrap_or_else(|_| {
            panic!(
                "TRIBUTARY_TEST_DYNAMODB is not set: run the suite with scripts/test, or \
                 export TRIBUTARY_TEST_DYNAMODB=\"$(scripts/dynamodb start | tail -n 1)\""
            )
        }),
    };
    let (mut run, mut checked, mut skipped, mut lines) = (0, 0, 0, 0);
    let mut failures = Vec::new();
    for b in &all {
        let Some((head, rest)) = &b.fate else {
            failures.push(format!(
                "{}: a ```{} example with no fate: put `<!-- example: … -->` on the line before its fence",
                b.at(),
                b.lang
            ));
            continue;
        };
        let word = head.split_whitespace().next().unwrap_or_default();
        let shell = SHELL.contains(&b.lang.as_str());
        let result = match word {
            "skip" | "fragment" => match reason(head, word) {
                Some(_) if word == "skip" || !shell => {
                    skipped += 1;
                    Ok(())
                }
                Some(_) => Err("`fragment` is for SQL examples".to_string()),
                None => Err(format!("`{word}` needs a reason: `{word} (why)`")),
            },
            "run" if shell => {
                let started = Instant::now();
                run_shell(&env, b, rest).map(|n| {
                    run += 1;
                    lines += n;
                    println!(
                        "{}: {n} commands in {:.1} s",
                        b.at(),
                        started.elapsed().as_secs_f64()
                    );
                })
            }
            "check" if !shell => check_sql(&env, b, rest, None).map(|()| checked += 1),
            "refused" if !shell => {
                let code = head.split_whitespace().nth(1).unwrap_or_default();
                check_sql(&env, b, rest, Some(code)).map(|()| checked += 1)
            }
            _ => Err(format!("unknown fate `{head}` for a ```{} example", b.lang)),
        };
        if let Err(e) = result {
            failures.push(format!("{}: {e}", b.at()));
        }
    }
    println!(
        "doc examples: {} found; {run} shell blocks run ({lines} commands), {checked} SQL blocks checked, {skipped} skipped",
        all.len()
    );
    assert!(
        failures.is_empty(),
        "{} doc examples fail:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
