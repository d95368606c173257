-- Latch as an SSH user certificate authority (issue 12): an enrollment token made with --ssh-ca
-- enrolls hosts that trust the control plane's user CA in sshd; the host keeps the choice.
ALTER TABLE enroll_tokens ADD COLUMN ssh_ca INTEGER NOT NULL DEFAULT 0;
ALTER TABLE hosts ADD COLUMN ssh_ca INTEGER NOT NULL DEFAULT 0;
