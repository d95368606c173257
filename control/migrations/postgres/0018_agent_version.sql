-- Which agent each host runs (issue 13): the version its User-Agent names and the agent
-- protocol of its latch-protocol header, written when they change (a fleet upgrade can be
-- followed host by host). NULL until the host's first poll after the upgrade.
ALTER TABLE hosts ADD COLUMN agent_version TEXT;
ALTER TABLE hosts ADD COLUMN agent_protocol BIGINT;
