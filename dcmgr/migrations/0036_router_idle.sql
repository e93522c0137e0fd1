-- A router's SNAT address (a floating_ips row held by a network and a host) goes back
-- to the pool once no instance of its network is on its host for a while
-- (`app::floating_ip::release_idle_routers`): since when it was seen so.
ALTER TABLE floating_ips ADD COLUMN idle_since TEXT;
