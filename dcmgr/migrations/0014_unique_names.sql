-- Names are unique within an account for networks, security groups, volumes (not
-- counting deleted ones, whose rows are kept) and images, as they already were for key
-- pairs: the CLI and bundles address resources by name. Names a database already holds
-- twice are kept on the oldest row (IDs grow with time) and the others renamed
-- NAME-ID, which no request could have made, so the indexes can be built.
UPDATE networks SET name = name || '-' || id
 WHERE EXISTS (SELECT 1 FROM networks o
                WHERE o.account_id = networks.account_id AND o.name = networks.name AND o.id < networks.id);
CREATE UNIQUE INDEX networks_name ON networks (account_id, name);

UPDATE security_groups SET name = name || '-' || id
 WHERE EXISTS (SELECT 1 FROM security_groups o
                WHERE o.account_id = security_groups.account_id AND o.name = security_groups.name
                  AND o.id < security_groups.id);
CREATE UNIQUE INDEX security_groups_name ON security_groups (account_id, name);

UPDATE volumes SET name = name || '-' || id
 WHERE state <> 'deleted'
   AND EXISTS (SELECT 1 FROM volumes o
                WHERE o.account_id = volumes.account_id AND o.name = volumes.name AND o.state <> 'deleted'
                  AND o.id < volumes.id);
CREATE UNIQUE INDEX volumes_name ON volumes (account_id, name) WHERE state <> 'deleted';

UPDATE images SET name = name || '-' || id
 WHERE EXISTS (SELECT 1 FROM images o
                WHERE o.account_id = images.account_id AND o.name = images.name AND o.id < images.id);
CREATE UNIQUE INDEX images_name ON images (account_id, name);
