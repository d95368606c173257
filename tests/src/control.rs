//! A real control plane on loopback, driven through `latchctl` and raw API calls.

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::database::TestDatabase;
use crate::{Ran, binary, run};

/// A running `latch-control serve` on 127.0.0.1 with a private data directory, on the database
/// `LATCH_TEST_STORE` chooses (SQLite in the data directory, or a PostgreSQL schema of its own).
pub struct ControlPlane {
    child: Child,
    /// Data directory (keys, admin token, server log; the SQLite database).
    pub data_dir: tempfile::TempDir,
    /// The database. Hold a clone to keep a PostgreSQL schema beyond the control plane (e.g.
    /// to start the server again by hand).
    pub database: Arc<TestDatabase>,
    /// Base URL, e.g. `https://127.0.0.1:40123`.
    pub url: String,
    /// The bootstrap admin's API key (`admin.token`).
    pub api_key: String,
    /// The bearer token `api_key` was exchanged for (at the first use: a test may install the
    /// CA the client trusts only after the start).
    bearer: std::sync::OnceLock<String>,
    /// The CA fingerprint agents pin (`sha256:…`).
    pub fingerprint: String,
}

impl ControlPlane {
    /// Starts a control plane; `extra` are additional `serve` flags (e.g. `--lease-timeout 3s`).
    pub fn start(extra: &[&str]) -> ControlPlane {
        let data_dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(
            data_dir,
            Arc::new(TestDatabase::from_env()),
            "127.0.0.1:0",
            extra,
        )
    }

    /// Starts a control plane listening on `listen` (`127.0.0.1:PORT`), for a test that must
    /// know its address before it starts (an identity provider's redirect URI).
    pub fn start_at(listen: &str, extra: &[&str]) -> ControlPlane {
        let data_dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(data_dir, Arc::new(TestDatabase::from_env()), listen, extra)
    }

    /// Starts a control plane on `database` whatever `LATCH_TEST_STORE` says (for tests about
    /// one store, or about moving between them).
    pub fn start_on(database: TestDatabase, extra: &[&str]) -> ControlPlane {
        let data_dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(data_dir, Arc::new(database), "127.0.0.1:0", extra)
    }

    /// Stops the server, copies its SQLite database into a new PostgreSQL schema with
    /// `latch-control copy-to-postgres`, and starts it again on the same address and data
    /// directory on PostgreSQL — the operator's move, step by step.
    pub fn move_to_postgres(mut self) -> ControlPlane {
        assert!(!self.database.is_postgres(), "already on PostgreSQL");
        let _ = self.child.kill();
        let _ = self.child.wait();
        let postgres = Arc::new(TestDatabase::postgres());
        let data = self.data_dir.path().join("data");
        let mut command = Command::new(binary("latch-control"));
        postgres.configure(&mut command);
        let copied = run(
            command.arg("copy-to-postgres").arg("--data-dir").arg(&data),
            None,
        );
        assert_eq!(
            copied.code, 0,
            "copy-to-postgres: {} {}",
            copied.stdout, copied.stderr
        );
        let listen = self.url.trim_start_matches("https://").to_owned();
        let data_dir = std::mem::replace(&mut self.data_dir, tempfile::tempdir().expect("tempdir"));
        Self::start_in(data_dir, postgres, &listen, &[])
    }

    /// Kills the server (`kill -9`) and starts it again on the same address and data directory.
    pub fn restart_after(mut self, down: Duration) -> ControlPlane {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(down);
        let listen = self.url.trim_start_matches("https://").to_owned();
        let data_dir = tempfile::tempdir().expect("tempdir");
        let old = std::mem::replace(&mut self.data_dir, data_dir);
        Self::start_in(old, self.database.clone(), &listen, &[])
    }

    /// Starts a second replica of this control plane: another `latch-control serve` on the
    /// same database, with its own address and data directory holding copies of this one's
    /// files (keys, CA, admin token) — the operator's key distribution. PostgreSQL only.
    pub fn replica(&self, extra: &[&str]) -> ControlPlane {
        assert!(
            self.database.is_postgres(),
            "replicas share a PostgreSQL database"
        );
        let data_dir = tempfile::tempdir().expect("tempdir");
        let (from, to) = (
            self.data_dir.path().join("data"),
            data_dir.path().join("data"),
        );
        std::fs::create_dir(&to).expect("replica data directory");
        for entry in std::fs::read_dir(&from).expect("data directory") {
            let entry = entry.expect("data directory entry");
            if entry.file_type().expect("file type").is_file() {
                std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy a key file");
            }
        }
        Self::start_in(data_dir, self.database.clone(), "127.0.0.1:0", extra)
    }

    /// Kills the server with SIGKILL (`kill -9`) while other threads may still be calling it;
    /// it is reaped when dropped. The data directory and the database stay.
    pub fn kill9(&self) {
        let killed = run(
            Command::new("kill").args(["-KILL", &self.child.id().to_string()]),
            None,
        );
        assert_eq!(killed.code, 0, "kill -9: {}", killed.stderr);
    }

    fn start_in(
        data_dir: tempfile::TempDir,
        database: Arc<TestDatabase>,
        listen: &str,
        extra: &[&str],
    ) -> ControlPlane {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.path().join("server.log"))
            .expect("server log");
        let mut command = Command::new(binary("latch-control"));
        database.configure(&mut command);
        let mut child = command
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir.path().join("data"))
            .args(["--listen", listen, "--log-level", "debug"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start latch-control");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut fingerprint = String::new();
        let mut store = String::new();
        let url = loop {
            let line = lines.next().and_then(Result::ok).unwrap_or_else(|| {
                let log =
                    std::fs::read_to_string(data_dir.path().join("server.log")).unwrap_or_default();
                panic!("latch-control exited before listening: {log}")
            });
            if let Some(found) = line.trim().strip_prefix("database:") {
                store = found.trim().to_owned();
            }
            if let Some(found) = line.trim().strip_prefix("CA fingerprint: ") {
                fingerprint = found.to_owned();
            }
            if let Some(url) = line.trim().strip_prefix("listening on ") {
                break url.to_owned();
            }
        };
        assert!(
            fingerprint.starts_with("sha256:"),
            "the control plane printed no CA fingerprint"
        );
        assert_eq!(
            store.starts_with("PostgreSQL"),
            database.is_postgres(),
            "the control plane runs on {store:?}, not on the store the test asked for ({database:?})"
        );
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let api_key = std::fs::read_to_string(data_dir.path().join("data/admin.token"))
            .expect("admin token")
            .trim()
            .to_owned();
        ControlPlane {
            child,
            data_dir,
            database,
            url,
            api_key,
            bearer: std::sync::OnceLock::new(),
            fingerprint,
        }
    }

    /// Runs `latchctl` against this control plane (token passed in the environment, not argv).
    pub fn latchctl(&self, args: &[&str]) -> Ran {
        self.latchctl_stdin(args, None)
    }

    /// Runs `latchctl` with `stdin`.
    pub fn latchctl_stdin(&self, args: &[&str], stdin: Option<&[u8]>) -> Ran {
        run(
            Command::new(binary("latchctl"))
                .args(["--server", &self.url])
                .args(args)
                .env("LATCH_TOKEN", self.token())
                .env("LATCH_CA_FILE", self.ca_file()),
            stdin,
        )
    }

    /// Runs `latchctl` as someone other than the bootstrap admin: `token` in `LATCH_TOKEN` (a
    /// bearer token or an API key), or none — then the session file of `latchctl login` under
    /// `config_home` (`XDG_CONFIG_HOME`) counts; run in `config_home`, where no
    /// `latch-data/admin.token` is.
    pub fn latchctl_as(
        &self,
        token: Option<&str>,
        config_home: &std::path::Path,
        args: &[&str],
        stdin: Option<&[u8]>,
    ) -> Ran {
        let mut command = Command::new(binary("latchctl"));
        command
            .args(["--server", &self.url])
            .args(args)
            .env_remove("LATCH_TOKEN")
            .env("XDG_CONFIG_HOME", config_home)
            .env("LATCH_CA_FILE", self.ca_file())
            .current_dir(config_home);
        if let Some(token) = token {
            command.env("LATCH_TOKEN", token);
        }
        run(&mut command, stdin)
    }

    /// Runs `latchctl --output json ARGS`, asserts success and parses the output.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--output", "json"];
        all.extend_from_slice(args);
        let out = self
            .latchctl(&all)
            .ok(&format!("latchctl {}", args.join(" ")));
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("latchctl printed invalid JSON ({e}): {out}"))
    }

    /// Creates an enrollment token and returns it.
    pub fn enroll_token(&self, ttl: &str, uses: u32) -> String {
        let token = self.json(&[
            "enroll-token",
            "create",
            "--ttl",
            ttl,
            "--uses",
            &uses.to_string(),
        ]);
        token["token"].as_str().expect("token").to_owned()
    }

    /// Waits until this control plane sees `host` online (its agent polled).
    pub fn wait_online(&self, host: &str) {
        crate::wait_for(&format!("{host} online"), Duration::from_secs(30), || {
            (self.json(&["hosts", "show", host])["online"] == true).then_some(())
        });
    }

    /// Queues a job through `latchctl jobs create` and returns its id.
    pub fn create_job(&self, args: &[&str]) -> String {
        let mut all = vec!["jobs", "create"];
        all.extend_from_slice(args);
        let job = self.json(&all);
        job["id"].as_str().expect("job id").to_owned()
    }

    /// Queues a set-password job through `latchctl jobs create --password-stdin` (the plaintext
    /// on stdin; the control plane sends only its SHA-512 crypt hash) and returns the job as
    /// `latchctl --output json` printed it.
    pub fn create_password_job(&self, host: &str, user: &str, password: &str) -> Value {
        let out = self.latchctl_stdin(
            &[
                "--output",
                "json",
                "jobs",
                "create",
                "--host",
                host,
                "--user",
                user,
                "--kind",
                "set-password",
                "--password-stdin",
            ],
            Some(format!("{password}\n").as_bytes()),
        );
        serde_json::from_str(&out.ok("latchctl jobs create --kind set-password"))
            .expect("set-password job JSON")
    }

    /// `latchctl jobs show ID`.
    pub fn job(&self, id: &str) -> Value {
        self.json(&["jobs", "show", id])
    }

    /// Waits (through `latchctl jobs wait`) until the job is final; returns it.
    pub fn wait_job(&self, id: &str) -> Value {
        let out = self.latchctl(&["--output", "json", "jobs", "wait", id, "--timeout", "60s"]);
        assert!(
            out.code == 0 || out.code == 1,
            "jobs wait {id} ended with {}: {} {}",
            out.code,
            out.stdout,
            out.stderr
        );
        serde_json::from_str(&out.stdout).expect("job json")
    }

    /// Waits for the job and asserts it was confirmed.
    pub fn expect_confirmed(&self, id: &str) -> Value {
        let job = self.wait_job(id);
        assert_eq!(
            job["status"], "confirmed",
            "job {id} did not confirm: {job:#}"
        );
        job
    }

    /// Waits for the job and asserts it failed with `code`.
    pub fn expect_failed(&self, id: &str, code: &str) -> Value {
        let job = self.wait_job(id);
        assert_eq!(
            job["status"], "failed",
            "job {id} should have failed: {job:#}"
        );
        assert_eq!(job["error"]["code"], code, "job {id}: {job:#}");
        job
    }

    /// The bootstrap admin's bearer token: `admin.token` (an API key) exchanged at
    /// `POST /v1/service_token` once.
    pub fn token(&self) -> &str {
        self.bearer.get_or_init(|| {
            let response = self
                .http()
                .post(format!("{}/v1/service_token", self.url))
                .json(&serde_json::json!({"api_key": self.api_key, "ttl_seconds": 12 * 3600}))
                .send()
                .expect("exchange the admin API key");
            let (status, issued) = status_and_json(response);
            assert_eq!(status, 201, "exchanging the admin API key: {issued}");
            issued["token"].as_str().expect("token").to_owned()
        })
    }

    /// A raw API call: `(status, body)`.
    pub fn api(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        self.try_api(method, path, body).expect("API call")
    }

    /// [`ControlPlane::api`] to a server that may be down: the transport error, if any.
    pub fn try_api(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<(u16, Value), reqwest::Error> {
        let client = self.http();
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = client
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(self.token());
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_owned());
        }
        Ok(status_and_json(request.send()?))
    }

    /// A raw API call with another bearer token (a host credential, a guess): `(status, body)`.
    pub fn api_as(&self, token: &str, method: &str, path: &str) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let response = self
            .http()
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(token)
            .send()
            .expect("API call");
        status_and_json(response)
    }

    /// Runs SQL (both engines' dialect) against the control plane's database as an attacker with
    /// write access to it could — `sqlite3` on the file or `psql` in the schema; returns its
    /// output (`|` between columns, a row a line).
    pub fn sql(&self, sql: &str) -> String {
        self.database.sql(&self.data_dir.path().join("data"), sql)
    }

    /// [`ControlPlane::sql`] that may fail (exit code and standard error in the result).
    pub fn try_sql(&self, sql: &str) -> Ran {
        self.database
            .try_sql(&self.data_dir.path().join("data"), sql)
    }

    /// A query's rows as JSON objects.
    pub fn sql_rows(&self, sql: &str) -> Vec<Value> {
        self.database.rows(&self.data_dir.path().join("data"), sql)
    }

    /// Drops an append-only trigger of the audit tables (`audit_log_no_update`, …).
    pub fn drop_trigger(&self, name: &str) {
        self.database
            .drop_trigger(&self.data_dir.path().join("data"), name);
    }

    /// Everything the database stores, as text.
    pub fn database_dump(&self) -> String {
        self.database.dump(&self.data_dir.path().join("data"))
    }

    /// A raw JSON `POST` with another bearer token: `(status, body)`.
    pub fn post_as(&self, token: &str, path: &str, body: &Value) -> (u16, Value) {
        let response = self
            .http()
            .post(format!("{}{path}", self.url))
            .bearer_auth(token)
            .json(body)
            .send()
            .expect("API call");
        status_and_json(response)
    }

    /// The control plane's CA certificate file.
    pub fn ca_file(&self) -> PathBuf {
        self.data_dir.path().join("data/ca.crt")
    }

    /// A blocking HTTP client that trusts only this control plane's CA.
    pub fn http(&self) -> reqwest::blocking::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = reqwest::Certificate::from_pem(&std::fs::read(self.ca_file()).expect("ca.crt"))
            .expect("CA");
        reqwest::blocking::Client::builder()
            .tls_certs_only([ca])
            .build()
            .expect("client")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An API answer as `(status, JSON body)`; a body that is not JSON comes back as a string.
fn status_and_json(response: reqwest::blocking::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}
