-- Passwords (issue 14, the console's sign-in): a user may have one, stored as an Argon2id
-- PHC string (salt and parameters inside it); NULL: the user signs in with tokens only.
-- Sessions are ordinary rows of api_tokens (named `session-…`, with an expiry).
ALTER TABLE users ADD COLUMN password_hash TEXT;
