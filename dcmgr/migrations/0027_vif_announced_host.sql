-- The host an interface's dispatch announced to its network's other hosts (one interface
-- of each re-sent with that host among its peers, in the transaction that sets this). A
-- later dispatch on the same network and host finds it and announces nothing: a create
-- no longer re-sends an interface on every other host of its network, and a re-sent
-- interface no longer bumps them again.
ALTER TABLE vifs ADD COLUMN announced_host TEXT;
CREATE INDEX vifs_announced ON vifs (network_id, announced_host);
