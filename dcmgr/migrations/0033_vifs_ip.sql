-- Finds the instance that holds an address (GET /instances?address=…, an operator's
-- "whose is 10.0.0.5?") without reading every interface.
CREATE INDEX vifs_ip ON vifs (ip);
