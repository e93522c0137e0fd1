-- The VXLAN endpoint each host's nwagent announced; interfaces' peers come from here.
CREATE TABLE host_tunnels (
    host_id   TEXT PRIMARY KEY,
    tunnel_ip TEXT NOT NULL
);
