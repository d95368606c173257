//! The credential vault's keys (issue 11, first slice), on both stores: the envelope, the
//! master key checked at start, its rotation (also interrupted), and no plaintext data key in
//! the database.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;

use std::path::Path;

use base64::Engine as _;
use latch_control::datadir::{self, DataDir, Options};
use latch_control::store::Page;
use latch_control::store::vault::OrganizationRecord;
use latch_control::vault::{
    self, DEFAULT_ORGANIZATION, EnvelopeError, MasterKeyFiles, SecretKey, open_data_key,
};
use support::{Engine, TestDb};

async fn open(db: &TestDb, dir: &Path) -> Result<DataDir, datadir::DataDirError> {
    datadir::open(dir, &db.options()).await
}

async fn refused(db: &TestDb, dir: &Path, options: Options) -> String {
    let options = Options {
        database: db.database(),
        ..options
    };
    match datadir::open(dir, &options).await {
        Ok(_) => panic!("the start was not refused"),
        Err(e) => e.to_string(),
    }
}

async fn default_org(data: &DataDir) -> OrganizationRecord {
    let orgs = data.store.organizations().await.unwrap();
    assert_eq!(orgs.len(), 1, "{orgs:?}");
    assert_eq!(orgs[0].name, DEFAULT_ORGANIZATION);
    orgs[0].clone()
}

fn data_key(data: &DataDir, org: &OrganizationRecord) -> SecretKey {
    open_data_key(&data.master_key, org).unwrap()
}

async fn actions(data: &DataDir) -> Vec<String> {
    let filter = latch_control::store::AuditFilter::default();
    data.store
        .list_audit(
            &filter,
            Page {
                offset: 0,
                count: 10_000,
            },
        )
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect()
}

both_stores!(first_start_makes_the_key_file_and_a_default_organization);
async fn first_start_makes_the_key_file_and_a_default_organization(db: TestDb) {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let data = open(&db, dir.path()).await.unwrap();
    let path = dir.path().join("master.key");
    assert_eq!(data.master_key_files.path(), path);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.trim().len(), 64);
    assert_eq!(
        hex::decode(text.trim()).unwrap(),
        data.master_key.expose_secret_bytes()
    );
    let org = default_org(&data).await;
    assert!(
        org.wrapped_data_key
            .starts_with(&format!("v1:{}:", data.master_key.id()))
    );
    assert!(org.canary.starts_with(&format!("v1:{}:", org.data_key_id)));
    assert!(
        actions(&data)
            .await
            .contains(&"organization.created".to_owned())
    );
    drop(data);

    // The next start opens it again and makes nothing new.
    let again = open(&db, dir.path()).await.unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    assert_eq!(default_org(&again).await, org);
    drop(again);
}

both_stores!(ciphertexts_open_only_with_their_key_and_record);
async fn ciphertexts_open_only_with_their_key_and_record(db: TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let data = open(&db, dir.path()).await.unwrap();
    let org = default_org(&data).await;
    let key = data_key(&data, &org);
    let sealed = key.seal("idn_1", b"correct horse").unwrap();
    assert!(sealed.starts_with(&format!("v1:{}:", org.data_key_id)));
    assert!(!sealed.contains("correct horse"));
    assert_eq!(key.open("idn_1", &sealed).unwrap(), b"correct horse");
    // Another record's id as associated data.
    assert!(matches!(
        key.open("idn_2", &sealed),
        Err(EnvelopeError::Rejected { .. })
    ));
    // The master key is not the data key; neither is another organization's.
    assert!(matches!(
        data.master_key.open("idn_1", &sealed),
        Err(EnvelopeError::WrongKey { .. })
    ));
    let other = vault::create_organization(
        data.store.as_ref(),
        &data.master_key,
        "acme",
        "test",
        chrono::Utc::now(),
    )
    .await
    .unwrap();
    assert_ne!(other.data_key_id, org.data_key_id);
    let other_key = data_key(&data, &other);
    assert!(other_key.open("idn_1", &sealed).is_err());
    // The wrapped data key is bound to its organization: moved onto another, it does not open.
    let swapped = OrganizationRecord {
        wrapped_data_key: org.wrapped_data_key.clone(),
        ..other.clone()
    };
    assert!(matches!(
        open_data_key(&data.master_key, &swapped),
        Err(EnvelopeError::Rejected { .. })
    ));
    // Names are unique.
    let taken = vault::create_organization(
        data.store.as_ref(),
        &data.master_key,
        "acme",
        "test",
        chrono::Utc::now(),
    )
    .await;
    assert!(matches!(
        taken,
        Err(vault::VaultError::OrganizationExists { .. })
    ));
    drop(data);
}

both_stores!(a_wrong_or_missing_master_key_refuses_the_start);
async fn a_wrong_or_missing_master_key_refuses_the_start(db: TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let data = open(&db, dir.path()).await.unwrap();
    let wanted = data.master_key.id().to_owned();
    drop(data);
    let path = dir.path().join("master.key");
    let original = std::fs::read(&path).unwrap();

    std::fs::write(&path, format!("{}\n", hex::encode([9u8; 32]))).unwrap();
    let message = refused(&db, dir.path(), Options::default()).await;
    assert!(
        message.contains("does not open organization default's data key"),
        "{message}"
    );
    assert!(message.contains("--master-key-file"), "{message}");
    assert!(message.contains(&wanted), "{message}");

    std::fs::remove_file(&path).unwrap();
    let message = refused(&db, dir.path(), Options::default()).await;
    assert!(message.contains("is missing"), "{message}");
    assert!(
        message.contains("could not read the existing secrets"),
        "{message}"
    );
    assert!(!path.exists(), "no new key is made");

    std::fs::write(&path, "not a key\n").unwrap();
    let message = refused(&db, dir.path(), Options::default()).await;
    assert!(message.contains("64 hex digits"), "{message}");

    // The right key, from a file elsewhere (--master-key-file).
    std::fs::remove_file(&path).unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let moved = elsewhere.path().join("vault.key");
    std::fs::write(&moved, &original).unwrap();
    let options = Options {
        database: db.database(),
        master_key_file: Some(moved.clone()),
        ..Options::default()
    };
    let data = datadir::open(dir.path(), &options).await.unwrap();
    assert_eq!(data.master_key.id(), wanted);
    assert_eq!(data.master_key_files.path(), moved);
    assert!(!path.exists());
    drop(data);
}

both_stores!(rotation_keeps_the_data_and_retires_the_old_key);
async fn rotation_keeps_the_data_and_retires_the_old_key(db: TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let mut data = open(&db, dir.path()).await.unwrap();
    let org = default_org(&data).await;
    let sealed = data_key(&data, &org).seal("idn_1", b"s3cret").unwrap();
    let path = dir.path().join("master.key");
    let old_file = std::fs::read(&path).unwrap();
    let old_id = data.master_key.id().to_owned();

    let rotated = data.rotate_master_key().await.unwrap();
    assert_eq!(rotated.from, old_id);
    assert_eq!(rotated.to, data.master_key.id());
    assert_ne!(rotated.from, rotated.to);
    assert_eq!(rotated.organizations, 1);
    assert_ne!(std::fs::read(&path).unwrap(), old_file);
    assert!(!dir.path().join("master.key.next").exists());
    let events = actions(&data).await;
    assert!(
        events.contains(&"master_key.rotated".to_owned()),
        "{events:?}"
    );
    let after = default_org(&data).await;
    assert_eq!(after.data_key_id, org.data_key_id, "the data key stays");
    assert_ne!(after.wrapped_data_key, org.wrapped_data_key);
    assert!(matches!(
        open_data_key(
            &SecretKey::from_bytes(old_id.clone(), old_bytes(&old_file)).unwrap(),
            &after
        ),
        Err(EnvelopeError::WrongKey { .. })
    ));
    drop(data);

    // Data sealed before still opens after a restart with the new key.
    let data = open(&db, dir.path()).await.unwrap();
    assert_eq!(
        data_key(&data, &after).open("idn_1", &sealed).unwrap(),
        b"s3cret"
    );
    let new_file = std::fs::read(&path).unwrap();
    drop(data);

    // The old key no longer starts the server.
    std::fs::write(&path, &old_file).unwrap();
    let message = refused(&db, dir.path(), Options::default()).await;
    assert!(
        message.contains("does not open organization default"),
        "{message}"
    );
    std::fs::write(&path, &new_file).unwrap();
    let data = open(&db, dir.path()).await.unwrap();
    drop(data);
}

fn old_bytes(file: &[u8]) -> [u8; 32] {
    hex::decode(String::from_utf8_lossy(file).trim())
        .unwrap()
        .try_into()
        .unwrap()
}

both_stores!(an_interrupted_rotation_is_finished_or_undone_at_start);
async fn an_interrupted_rotation_is_finished_or_undone_at_start(db: TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let data = open(&db, dir.path()).await.unwrap();
    let org = default_org(&data).await;
    let sealed = data_key(&data, &org).seal("idn_1", b"kept").unwrap();
    let files = MasterKeyFiles::new(dir.path(), None);
    let old_file = std::fs::read(files.path()).unwrap();

    // Crash after the database step, before the file step.
    let (new, _) = vault::rewrap_under_new_key(
        data.store.as_ref(),
        &files,
        &data.master_key,
        "test",
        chrono::Utc::now(),
    )
    .await
    .unwrap();
    assert_eq!(
        std::fs::read(files.path()).unwrap(),
        old_file,
        "not switched yet"
    );
    assert!(files.next_path().exists());
    drop(data);
    let data = open(&db, dir.path()).await.unwrap();
    assert_eq!(data.master_key.id(), new.id(), "the rotation was finished");
    assert!(!files.next_path().exists());
    assert_eq!(
        old_bytes(&std::fs::read(files.path()).unwrap()),
        *new.expose_secret_bytes()
    );
    let org = default_org(&data).await;
    assert_eq!(
        data_key(&data, &org).open("idn_1", &sealed).unwrap(),
        b"kept"
    );

    // Crash after the new key was written, before the database step: it is dropped.
    let current = data.master_key.id().to_owned();
    std::fs::write(files.next_path(), format!("{}\n", hex::encode([5u8; 32]))).unwrap();
    drop(data);
    let data = open(&db, dir.path()).await.unwrap();
    assert_eq!(data.master_key.id(), current);
    assert!(!files.next_path().exists());
    assert_eq!(
        data_key(&data, &org).open("idn_1", &sealed).unwrap(),
        b"kept"
    );
    drop(data);
}

both_stores!(the_database_holds_no_plaintext_data_key);
async fn the_database_holds_no_plaintext_data_key(db: TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let mut data = open(&db, dir.path()).await.unwrap();
    data.rotate_master_key().await.unwrap();
    let org = default_org(&data).await;
    let raw = *data_key(&data, &org).expose_secret_bytes();
    let master = *data.master_key.expose_secret_bytes();
    let forms = |bytes: &[u8; 32]| {
        vec![
            bytes.to_vec(),
            hex::encode(bytes).into_bytes(),
            hex::encode_upper(bytes).into_bytes(),
            base64::engine::general_purpose::STANDARD
                .encode(bytes)
                .into_bytes(),
        ]
    };
    // What the store returns, on either engine.
    let stored = format!("{org:?}").into_bytes();
    for form in forms(&raw).iter().chain(forms(&master).iter()) {
        assert!(!contains(&stored, form));
    }
    drop(data);
    if db.engine == Engine::Sqlite {
        // Every byte of the SQLite files (database, WAL), after the store closed.
        let mut scanned = 0;
        let mut found_organization = false;
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let entry = entry.unwrap();
            if entry.file_name().to_string_lossy().starts_with("latch.db") {
                let bytes = std::fs::read(entry.path()).unwrap();
                found_organization |= contains(&bytes, org.id.as_bytes());
                for form in forms(&raw).iter().chain(forms(&master).iter()) {
                    assert!(
                        !contains(&bytes, form),
                        "{} holds a key in plain",
                        entry.path().display()
                    );
                }
                scanned += 1;
            }
        }
        assert!(scanned >= 1);
        assert!(found_organization, "the scan reads the organization's row");
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
