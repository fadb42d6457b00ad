//! Every command of the three programs explains itself: `--help` of each
//! subcommand ends with examples, and every example parses (run again with
//! `--help` appended, which checks its subcommands and options without
//! doing anything).

use palisade_tests::command;

const PROGRAMS: [&str; 3] = ["palisade", "palisade-broker", "palisade-connector"];

async fn help(program: &str, args: &[String]) -> String {
    let out = command(program).args(args).arg("--help").output().await.expect("run --help");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "`{program} {} --help` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// The names in the "Commands:" section of a help text, without `help`.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .filter(|name| name != "help")
        .collect()
}

/// Splits an example line like a shell would for these simple cases:
/// words, and "double-quoted phrases".
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line.trim();
    while !rest.is_empty() {
        if let Some(quoted) = rest.strip_prefix('"') {
            let end = quoted.find('"').expect("a closing quote");
            out.push(quoted[..end].to_owned());
            rest = quoted[end + 1..].trim_start();
        } else {
            let end = rest.find(' ').unwrap_or(rest.len());
            out.push(rest[..end].to_owned());
            rest = rest[end..].trim_start();
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subcommand_has_examples_that_parse() {
    for program in PROGRAMS {
        let top = help(program, &[]).await;
        let commands = subcommands(&top);
        assert!(commands.len() >= 3, "{program} lists its commands:\n{top}");
        for sub in commands {
            let text = help(program, std::slice::from_ref(&sub)).await;
            let examples: Vec<&str> = text.lines().skip_while(|l| !l.starts_with("Examples:")).skip(1).collect();
            assert!(!examples.is_empty(), "`{program} {sub} --help` has no examples:\n{text}");
            let runnable: Vec<Vec<String>> =
                examples.iter().map(|l| words(l)).filter(|w| w.first().is_some_and(|p| p == program)).collect();
            assert!(!runnable.is_empty(), "`{program} {sub}` shows no example of itself:\n{text}");
            for example in runnable {
                help(program, &example[1..]).await;
            }
        }
    }
}
