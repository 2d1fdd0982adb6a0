-- The Responses API's stored responses (`store`, `previous_response_id`),
-- so that a conversation continues through any replica. A tenant keeps its
-- newest ones within a count and a size (the server's limits); the oldest
-- go first.
CREATE TABLE responses (
    tenant      text NOT NULL,
    id          text NOT NULL,
    -- The conversation the response ends, as the API's messages (JSON).
    messages    text NOT NULL,
    -- The response object the API answered (JSON).
    object      text NOT NULL,
    bytes       bigint NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (tenant, id)
);
CREATE INDEX responses_by_age ON responses (tenant, created_at);
