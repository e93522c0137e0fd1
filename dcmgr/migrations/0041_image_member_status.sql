-- A share is an offer: the member accepts it before the image is listed to it, so that
-- no account can put images into another's list (or make its names ambiguous) unasked,
-- as Glance's image members. A declined share stays declined: sharing again does not
-- offer it anew. Shares made before this are kept as they were used: accepted.
ALTER TABLE image_members ADD COLUMN status TEXT NOT NULL DEFAULT 'accepted';
