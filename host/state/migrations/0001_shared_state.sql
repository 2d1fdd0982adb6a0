-- The state several deepwasm replicas share. Applied once, in order, by
-- whichever replica starts first (under an advisory lock); see
-- host/state/src/migrate.rs.

-- Plugin components, content-addressed: `id` is the SHA-256 of `bytes`,
-- stored once however many tenants upload the same component.
CREATE TABLE plugin_blobs (
    id          text PRIMARY KEY CHECK (id ~ '^[0-9a-f]{64}$'),
    bytes       bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Each tenant's plugins: a name and an owner for a component. A plugin is
-- visible once its row is committed, in the same transaction as its bytes.
CREATE TABLE plugins (
    tenant      text NOT NULL,
    id          text NOT NULL REFERENCES plugin_blobs (id),
    name        text NOT NULL,
    world       text NOT NULL,
    size_bytes  bigint NOT NULL,
    created_at  bigint NOT NULL,
    -- What the API lists besides: the component's imports and exports,
    -- as JSON, so that listing never needs the component compiled.
    info        text NOT NULL,
    PRIMARY KEY (tenant, id),
    UNIQUE (tenant, name)
);

-- The usage ledger: each server process's running totals per tenant,
-- written whole, never added to, so that a write repeated after a lost
-- answer counts once. A tenant's usage is the sum over processes.
CREATE TABLE usage_totals (
    tenant             text NOT NULL,
    process            text NOT NULL,
    requests           bigint NOT NULL,
    prompt_tokens      bigint NOT NULL,
    completion_tokens  bigint NOT NULL,
    plugin_calls       bigint NOT NULL,
    plugin_fuel        bigint NOT NULL,
    plugin_wall_us     bigint NOT NULL,
    plugin_limit_hits  bigint NOT NULL,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, process)
);

-- Tokens spent per tenant and second (the database's clock): a tenant's
-- rolling minute is the sum of its last 60 seconds.
CREATE TABLE token_spend (
    tenant  text NOT NULL,
    second  bigint NOT NULL,
    tokens  bigint NOT NULL,
    PRIMARY KEY (tenant, second)
);

-- Requests running now, one lease each. The process holding a lease
-- renews it while the request runs and deletes it at the end; a process
-- that dies leaves leases that expire.
CREATE TABLE leases (
    id          bigserial PRIMARY KEY,
    tenant      text NOT NULL,
    process     text NOT NULL,
    expires_at  timestamptz NOT NULL
);
CREATE INDEX leases_by_tenant ON leases (tenant, expires_at);
CREATE INDEX leases_by_process ON leases (process);

-- Admit one request of a tenant, in one round trip: refuse it if the
-- tenant spent its tokens of the rolling minute or holds `max_running`
-- live leases, else take a lease. The advisory lock orders a tenant's
-- admissions across every replica, and each statement of a (volatile)
-- PL/pgSQL function reads a fresh snapshot, so each admission sees the
-- leases and spends of those before it.
CREATE FUNCTION deepwasm_admit(
    p_tenant text,
    p_process text,
    p_max_running integer,
    p_tokens_per_minute bigint,
    p_ttl_ms integer
) RETURNS TABLE (lease bigint, running integer, spent bigint, retry_after_s integer)
LANGUAGE plpgsql AS $$
DECLARE
    v_now bigint := floor(extract(epoch FROM clock_timestamp()));
    v_spent bigint := 0;
    v_oldest bigint;
    v_running integer;
    v_lease bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('deepwasm.tenant:' || p_tenant, 0));
    IF p_tokens_per_minute IS NOT NULL THEN
        SELECT coalesce(sum(tokens), 0), min(second) INTO v_spent, v_oldest
          FROM token_spend
         WHERE tenant = p_tenant AND second > v_now - 60;
        IF v_spent >= p_tokens_per_minute THEN
            RETURN QUERY SELECT NULL::bigint, NULL::integer, v_spent,
                greatest(1, (v_oldest + 60 - v_now)::integer);
            RETURN;
        END IF;
    END IF;
    DELETE FROM leases
     WHERE tenant = p_tenant AND expires_at < clock_timestamp() - interval '1 minute';
    SELECT count(*) INTO v_running
      FROM leases
     WHERE tenant = p_tenant AND expires_at > clock_timestamp();
    IF v_running >= p_max_running THEN
        RETURN QUERY SELECT NULL::bigint, v_running, v_spent, 1;
        RETURN;
    END IF;
    INSERT INTO leases (tenant, process, expires_at)
    VALUES (p_tenant, p_process, clock_timestamp() + p_ttl_ms * interval '1 millisecond')
    RETURNING id INTO v_lease;
    RETURN QUERY SELECT v_lease, v_running + 1, v_spent, 0;
END
$$;
