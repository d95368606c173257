//! Issue 9, "A faster agent": the real agent against the raw shadow-utils loop and Ansible's
//! `ansible.builtin.user`, the same changes on the same tmpfs test-host image, in one run; the
//! create time on a host with 10,000 users; the idle agent's RSS and CPU.
//!
//! Sizes come from the environment: `LATCH_BENCH_USERS` (default 5: the smoke size CI runs),
//! `LATCH_BENCH_IDLE_SECS` (default 3), `LATCH_BENCH_BIG_HOST_USERS` (default 10,000),
//! `LATCH_BENCH_ANSIBLE=1` runs Ansible from a throwaway venv (`target/bench-venv`, made with
//! pip when missing). `scripts/bench` runs it at 200 users with Ansible and 60 s idle and
//! writes the table into BENCHMARKS.md (`LATCH_BENCH_WRITE=1`). The smoke run asserts the
//! results are right (every account made with its group and password, then gone), never times.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use latch_e2e::{ControlPlane, RealEtc, TestHost, e2e_enabled, wait_for};

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn users(prefix: &str, n: u64) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

/// Milliseconds the control plane took from delivering the first of `ids` to the last outcome
/// (its own clock: `job_events.at` of the first `delivered`, `jobs.finished_at` of the last).
fn server_span_ms(cp: &ControlPlane, ids: &[String]) -> f64 {
    let list = ids
        .iter()
        .map(|id| format!("'{id}'"))
        .collect::<Vec<_>>()
        .join(",");
    let first: f64 = cp
        .sql(&format!(
            "SELECT MIN(at) FROM job_events WHERE event = 'delivered' AND job_id IN ({list})"
        ))
        .trim()
        .parse()
        .expect("first delivery");
    let last: f64 = cp
        .sql(&format!(
            "SELECT MAX(finished_at) FROM jobs WHERE id IN ({list})"
        ))
        .trim()
        .parse()
        .expect("last outcome");
    last - first
}

/// Queues `jobs` while the agent is stopped, starts it, waits until every job is confirmed;
/// returns the server span.
fn agent_batch(cp: &ControlPlane, host: &TestHost, jobs: &[Vec<String>]) -> f64 {
    let mut ids = Vec::new();
    for args in jobs {
        let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
        let password = all.iter().position(|a| *a == "--password-stdin");
        if password.is_some() {
            all.splice(0..0, ["--output", "json", "jobs", "create"]);
            let out = cp.latchctl_stdin(&all, Some(b"correct horse battery staple\n"));
            let job: serde_json::Value = serde_json::from_str(&out.stdout)
                .unwrap_or_else(|e| panic!("latchctl: {e}: {} {}", out.stdout, out.stderr));
            ids.push(job["id"].as_str().expect("job id").to_owned());
        } else {
            ids.push(cp.create_job(&all));
        }
    }
    // LATCH_BENCH_STRACE=FILE: profile with `strace -f -tt` (program starts, syncs, renames);
    // the trace is copied to FILE.kind (slows the agent: for where the time goes, not for timing).
    let strace = std::env::var("LATCH_BENCH_STRACE").ok();
    let agent = match &strace {
        Some(_) => host.start_agent_with(
            "strace -f -tt --seccomp-bpf -e trace=execve,openat,rename,getdents64 -o /tmp/agent.strace",
        ),
        None => host.start_agent(),
    };
    for id in &ids {
        cp.expect_confirmed(id);
    }
    if strace.is_some() {
        // SIGTERM reaches strace, not the agent under it: end the agent itself first.
        let _ = std::process::Command::new("kill")
            .arg(agent_host_pid(host).to_string())
            .status();
    }
    agent.stop();
    if let Some(file) = strace {
        let kind = &jobs[0][3];
        std::fs::write(format!("{file}.{kind}"), host.read("/tmp/agent.strace")).expect("trace");
    }
    server_span_ms(cp, &ids)
}

/// Runs `script` with bash inside `host`; returns the milliseconds it printed as its last line.
fn timed_script(host: &TestHost, script: &str) -> f64 {
    let ran = host.exec(&["bash", "-c", script]);
    assert_eq!(ran.code, 0, "script failed: {}\n{}", ran.stdout, ran.stderr);
    ran.stdout
        .lines()
        .last()
        .and_then(|l| l.trim().parse::<f64>().ok())
        .map(|ns| ns / 1e6)
        .expect("elapsed nanoseconds")
}

const TIMED: &str = "start=$(date +%s%N); work; echo $(( $(date +%s%N) - start ))";

fn assert_made(host: &TestHost, names: &[String], hash: &str) {
    let sudo = host.group_members("sudo");
    for name in names {
        assert!(host.passwd_line(name).is_some(), "{name} missing");
        assert!(sudo.contains(name), "{name} not in sudo: {sudo:?}");
        let shadow = host.shadow_line(name).expect("shadow line");
        assert_eq!(shadow.split(':').nth(1), Some(hash), "{name}'s password");
        assert_eq!(host.exec(&["test", "-d", &format!("/home/{name}")]).code, 0);
    }
}

fn assert_gone(host: &TestHost, names: &[String]) {
    for name in names {
        assert!(host.passwd_line(name).is_none(), "{name} still there");
        assert!(!host.group_members("sudo").contains(name));
        assert_ne!(host.exec(&["test", "-e", &format!("/home/{name}")]).code, 0);
    }
}

/// The raw shadow-utils loop: (create ms, delete ms).
fn raw_loop(host: &TestHost, names: &[String], hash: &str) -> (f64, f64) {
    let list = names.join(" ");
    let create = format!(
        "set -e; work() {{ for u in {list}; do useradd --create-home --shell /bin/bash --comment raw \"$u\"; \
         usermod -aG sudo \"$u\"; printf '%s:%s\\n' \"$u\" '{hash}' | chpasswd -e; done; }}; {TIMED}"
    );
    let create_ms = timed_script(host, &create);
    assert_made(host, names, hash);
    let delete =
        format!("set -e; work() {{ for u in {list}; do userdel --remove \"$u\"; done; }}; {TIMED}");
    let delete_ms = timed_script(host, &delete);
    assert_gone(host, names);
    (create_ms, delete_ms)
}

/// The venv with ansible-playbook, made when missing.
fn ansible_venv() -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-venv");
    let playbook = venv.join("bin/ansible-playbook");
    if !playbook.exists() {
        let made = std::process::Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 -m venv (apt install python3-venv)");
        assert!(made.success(), "python3 -m venv failed");
        let pip = std::process::Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "ansible-core"])
            .status()
            .expect("pip");
        assert!(pip.success(), "pip install ansible-core failed");
    }
    venv.canonicalize().expect("venv path")
}

/// Ansible's user module, `connection: local` inside the host: (create ms, delete ms).
fn ansible(host: &TestHost, names: &[String], hash: &str) -> (f64, f64) {
    let venv = ansible_venv();
    let items = names
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let present = format!(
        "- hosts: localhost\n  connection: local\n  gather_facts: false\n  tasks:\n    - ansible.builtin.user:\n        name: \"{{{{ item }}}}\"\n        groups: sudo\n        append: true\n        shell: /bin/bash\n        comment: ansible\n        create_home: true\n        password: '{hash}'\n      loop: [{items}]\n"
    );
    let absent = format!(
        "- hosts: localhost\n  connection: local\n  gather_facts: false\n  tasks:\n    - ansible.builtin.user:\n        name: \"{{{{ item }}}}\"\n        state: absent\n        remove: true\n      loop: [{items}]\n"
    );
    host.write("/tmp/present.yml", &present);
    host.write("/tmp/absent.yml", &absent);
    let play = |file: &str| {
        format!(
            "set -e; export ANSIBLE_LOCAL_TEMP=/tmp/ansible-local HOME=/tmp ANSIBLE_NOCOLOR=1; \
             work() {{ {venv}/bin/ansible-playbook -i localhost, -e ansible_python_interpreter={venv}/bin/python {file} >/tmp/ansible.out 2>&1 || {{ cat /tmp/ansible.out; exit 1; }}; }}; {TIMED}",
            venv = venv.display()
        )
    };
    let create_ms = timed_script(host, &play("/tmp/present.yml"));
    assert_made(host, names, hash);
    let delete_ms = timed_script(host, &play("/tmp/absent.yml"));
    assert_gone(host, names);
    (create_ms, delete_ms)
}

/// Appends `n` users (UIDs 100000…, each with a private group, half of them also in `users`-like
/// extra groups) to the test host's account files by writing them, not by running useradd.
fn populate(host: &TestHost, n: u64) {
    let script = format!(
        "set -e; for i in $(seq 0 {last}); do u=bulk$i; id=$((100000 + i)); \
         echo \"$u:x:$id:$id::/home/$u:/bin/bash\" >&3; echo \"$u:x:$id:\" >&4; \
         echo \"$u:!:20000:0:99999:7:::\" >&5; echo \"$u:!::\" >&6; done \
         3>>/etc/passwd 4>>/etc/group 5>>/etc/shadow 6>>/etc/gshadow",
        last = n - 1
    );
    let ran = host.exec(&["bash", "-c", &script]);
    assert_eq!(ran.code, 0, "populate: {}", ran.stderr);
}

/// VmRSS (kB) and utime+stime (clock ticks) of a process, host PID.
fn rss_and_ticks(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("stat")
        .1
        .split_whitespace()
        .collect();
    let ticks =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    (rss, ticks)
}

/// The host PID of the test host's `latch-agent run`.
fn agent_host_pid(host: &TestHost) -> u32 {
    wait_for("the agent's process", Duration::from_secs(10), || {
        std::fs::read_dir("/proc")
            .ok()?
            .flatten()
            .find_map(|entry| {
                let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
                let ns = std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok()?;
                let host_ns = std::fs::read_link(format!("/proc/{}/ns/pid", host.pid)).ok()?;
                (ns == host_ns && cmdline.starts_with(b"/mnt/bin/latch-agent\0run\0"))
                    .then_some(pid)
            })
    })
}

fn ratio(a: f64, b: f64) -> String {
    format!("{:.2}×", a / b)
}

#[test]
fn agent_speed_against_shadow_utils_and_ansible() {
    if !e2e_enabled("agent_speed_against_shadow_utils_and_ansible") {
        return;
    }
    let n = env_number("LATCH_BENCH_USERS", 5);
    let idle_secs = env_number("LATCH_BENCH_IDLE_SECS", 3);
    let big = env_number("LATCH_BENCH_BIG_HOST_USERS", 10_000);
    let with_ansible = std::env::var("LATCH_BENCH_ANSIBLE").is_ok_and(|v| v == "1");
    let real = RealEtc::snapshot();
    let cp = ControlPlane::start(&[]);

    // (a) the raw loop needs the agent's hash: a first set-password shows it. The raw loop runs
    // before and after the agent (on fresh hosts) and the mean counts: the machine is shared,
    // and its load drifts over a run.
    let host = TestHost::start("e2e-speed-agent");
    host.enroll_ok(&cp);
    let names = users("ag", n);
    let mut grants = Vec::new();
    for name in &names {
        grants.push(
            [
                "--host",
                &host.name,
                "--kind",
                "create-account",
                "--user",
                name,
                "--group",
                "sudo",
                "--expires-in",
                "2h",
            ]
            .map(String::from)
            .to_vec(),
        );
    }
    for name in &names {
        grants.push(
            [
                "--host",
                &host.name,
                "--kind",
                "set-password",
                "--user",
                name,
                "--password-stdin",
            ]
            .map(String::from)
            .to_vec(),
        );
    }
    let raw_first = (n >= 20).then(|| {
        let raw_host = TestHost::start("e2e-speed-raw0");
        let hash = "$6$benchmarksalt$Q5k0p0XGq4uJ5bbx6z0S6h7vJXK5w1c2XkKq3sMuyVjqS0o0w0rjQy8n0Bz9gqvQmF0mW2kzQ3M9yLrWcXr4r/";
        let result = raw_loop(&raw_host, &users("rv", n), hash);
        raw_host.assert_account_files_clean();
        result
    });
    // (b) the real agent: N create-account (sudo) + N set-password, then N delete-account.
    let agent_create = agent_batch(&cp, &host, &grants);
    let hash = host
        .shadow_line(&names[0])
        .and_then(|l| l.split(':').nth(1).map(str::to_owned))
        .expect("the password hash the agent set");
    assert!(hash.starts_with("$6$"), "{hash}");
    for name in &names {
        let theirs = host.shadow_line(name).expect("shadow");
        assert!(
            theirs
                .split(':')
                .nth(1)
                .is_some_and(|h| h.starts_with("$6$"))
        );
        assert!(host.group_members("sudo").contains(name));
        assert_eq!(host.exec(&["test", "-d", &format!("/home/{name}")]).code, 0);
    }
    let deletes: Vec<Vec<String>> = names
        .iter()
        .map(|name| {
            [
                "--host",
                &host.name,
                "--kind",
                "delete-account",
                "--user",
                name,
            ]
            .map(String::from)
            .to_vec()
        })
        .collect();
    let agent_delete = agent_batch(&cp, &host, &deletes);
    assert_gone(&host, &names);

    // Idle: RSS and CPU of the agent over LATCH_BENCH_IDLE_SECS with nothing to do.
    let agent = host.start_agent();
    std::thread::sleep(Duration::from_secs(2));
    let pid = agent_host_pid(&host);
    let (_, ticks_before) = rss_and_ticks(pid);
    let idle_start = Instant::now();
    std::thread::sleep(Duration::from_secs(idle_secs));
    let (rss_kb, ticks_after) = rss_and_ticks(pid);
    let idle_wall = idle_start.elapsed().as_secs_f64();
    let ticks_per_sec = 100.0; // USER_HZ on Linux
    let idle_cpu_pct = (ticks_after - ticks_before) as f64 / ticks_per_sec / idle_wall * 100.0;
    agent.stop();

    // (a) the raw shadow-utils loop on a fresh host from the same image.
    let raw_host = TestHost::start("e2e-speed-raw");
    let (mut raw_create, mut raw_delete) = raw_loop(&raw_host, &users("rw", n), &hash);
    raw_host.assert_account_files_clean();
    let raw_runs = match raw_first {
        Some((create, delete)) => {
            let runs = format!(
                " (before the agent: {create:.0} + {delete:.0}; after: {raw_create:.0} + {raw_delete:.0}; mean counts)"
            );
            raw_create = (raw_create + create) / 2.0;
            raw_delete = (raw_delete + delete) / 2.0;
            runs
        }
        None => String::new(),
    };

    // (c) Ansible, on a fresh host from the same image.
    let ansible_ms = with_ansible.then(|| {
        let ans_host = TestHost::start("e2e-speed-ansible");
        let result = ansible(&ans_host, &users("an", n), &hash);
        ans_host.assert_account_files_clean();
        result
    });

    // A host with `big` users: create-account, delivery → outcome, median of 5.
    let big_host = TestHost::start("e2e-speed-big");
    populate(&big_host, big);
    big_host.enroll_ok(&cp);
    let big_agent = big_host.start_agent();
    let mut big_ms = Vec::new();
    for i in 0..5 {
        let id = cp.create_job(&[
            "--host",
            &big_host.name,
            "--kind",
            "create-account",
            "--user",
            &format!("big{i}"),
            "--group",
            "sudo",
            "--expires-in",
            "2h",
        ]);
        cp.expect_confirmed(&id);
        big_ms.push(server_span_ms(&cp, &[id]));
    }
    big_agent.stop();
    big_ms.sort_by(f64::total_cmp);
    let big_median = big_ms[big_ms.len() / 2];
    // The distro's own floor there: one `useradd --create-home --groups sudo`, median of 5.
    let mut big_raw: Vec<f64> = (0..5)
        .map(|i| {
            timed_script(
                &big_host,
                &format!("set -e; work() {{ useradd --create-home --shell /bin/bash --groups sudo bigraw{i}; }}; {TIMED}"),
            )
        })
        .collect();
    big_raw.sort_by(f64::total_cmp);
    let big_raw_median = big_raw[big_raw.len() / 2];

    let agent_total = agent_create + agent_delete;
    let raw_total = raw_create + raw_delete;
    let mut table = String::from("| measure | target | measured | ratio |\n|---|---|---|---|\n");
    table += &format!(
        "| agent: {n} × (create-account with sudo + set-password), server span first delivery → last outcome | — | {agent_create:.0} ms | {} of the raw loop |\n",
        ratio(agent_create, raw_create)
    );
    table += &format!(
        "| agent: {n} × delete-account (lock, groups, keys, sudo timestamps, sessions, processes, userdel, verify) | — | {agent_delete:.0} ms | {} of the raw loop |\n",
        ratio(agent_delete, raw_delete)
    );
    table += &format!(
        "| raw loop: {n} × (useradd -m + usermod -aG sudo + chpasswd -e), then {n} × userdel -r | — | {raw_create:.0} + {raw_delete:.0} = {raw_total:.0} ms{raw_runs} | — |\n"
    );
    table += &format!(
        "| **agent vs raw shadow-utils loop**, create + delete | ≤ 1.5× | {agent_total:.0} ms vs {raw_total:.0} ms | **{}** |\n",
        ratio(agent_total, raw_total)
    );
    if let Some((ans_create, ans_delete)) = ansible_ms {
        let ans_total = ans_create + ans_delete;
        table += &format!(
            "| Ansible `ansible.builtin.user`, same changes (`connection: local`, two playbook runs) | — | {ans_create:.0} + {ans_delete:.0} = {ans_total:.0} ms | raw loop {} faster |\n",
            ratio(ans_total, raw_total)
        );
        table += &format!(
            "| **agent vs Ansible** | ≥ 30× faster | {agent_total:.0} ms vs {ans_total:.0} ms | **{} faster** |\n",
            ratio(ans_total, agent_total)
        );
    } else {
        table += "| agent vs Ansible | ≥ 30× faster | not run (LATCH_BENCH_ANSIBLE=1) | — |\n";
    }
    table += &format!(
        "| **create-account on a host with {big} users** (delivery → outcome, median of 5) | < 50 ms | {big_median:.0} ms (all: {}) | **{}** |\n",
        big_ms
            .iter()
            .map(|m| format!("{m:.0}"))
            .collect::<Vec<_>>()
            .join(", "),
        ratio(big_median, 50.0)
    );
    table += &format!(
        "| the same host: one `useradd --create-home --groups sudo` (median of 5) | — | {big_raw_median:.0} ms | agent {} of it |\n",
        ratio(big_median, big_raw_median)
    );
    table += &format!(
        "| **agent idle**, {idle_secs} s | RSS < 15 MB, CPU < 0.1 % | {:.1} MB, {idle_cpu_pct:.3} % | **{}, {}** |\n",
        rss_kb as f64 / 1024.0,
        ratio(rss_kb as f64 / 1024.0, 15.0),
        ratio(idle_cpu_pct, 0.1)
    );
    println!("agent speed:\n{table}");
    if std::env::var("LATCH_BENCH_WRITE").is_ok_and(|v| v == "1") {
        latch_e2e::write_benchmark_section("agent-speed", &table);
    }
    real.assert_unchanged();
}
