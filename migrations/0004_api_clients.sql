-- API clients: callers of the admin API and of the inbound API in the
-- api_client auth mode. Only a hash of each token is stored, never the token.

CREATE TABLE api_clients (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name         text        NOT NULL,
    token_hash   text        NOT NULL,
    scopes       text[]      NOT NULL DEFAULT '{}',
    enabled      boolean     NOT NULL DEFAULT true,
    description  text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    CONSTRAINT api_clients_name_check CHECK (name ~ '^[a-z0-9][a-z0-9_.-]{0,62}$'),
    CONSTRAINT api_clients_token_hash_check CHECK (token_hash ~ '^[0-9a-f]{64}$'),
    CONSTRAINT api_clients_scopes_check
        CHECK (scopes <@ ARRAY['inbound:write', 'admin:dlq', 'admin:read']::text[]),
    CONSTRAINT api_clients_name_key UNIQUE (name),
    CONSTRAINT api_clients_token_hash_key UNIQUE (token_hash)
);

CREATE TRIGGER api_clients_set_updated_at
    BEFORE UPDATE ON api_clients
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

COMMENT ON TABLE api_clients IS 'Clients of the admin API and of the api_client auth mode; authenticated by the sha256 of their x-api-token.';
COMMENT ON COLUMN api_clients.id IS 'Surrogate key.';
COMMENT ON COLUMN api_clients.name IS 'Unique client name (lowercase letters, digits, _ . -).';
COMMENT ON COLUMN api_clients.token_hash IS 'sha256 (lowercase hex) of the client''s token; the token itself is never stored. Lookups are by this column (unique).';
COMMENT ON COLUMN api_clients.scopes IS 'Granted scopes among inbound:write, admin:dlq, admin:read; a new scope needs a new migration.';
COMMENT ON COLUMN api_clients.enabled IS 'false disables the client without deleting it.';
COMMENT ON COLUMN api_clients.description IS 'Free text: who uses this client and why.';
COMMENT ON COLUMN api_clients.created_at IS 'When the client was created.';
COMMENT ON COLUMN api_clients.updated_at IS 'Last change of the row (set by trigger).';
COMMENT ON COLUMN api_clients.last_used_at IS 'Last successful authentication, if recorded.';
