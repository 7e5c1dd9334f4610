-- Predefined users for trying shardwallet on a local cluster (`make testdata`).
--
-- This file only lists wallets and their opening balances (minor units). The loader
-- (`shardwallet testdata`) routes each user to its shard with the shard map and funds
-- the wallet with a balanced adjustment, so `shardwallet verify` stays clean. Users
-- that already exist are left alone, so loading twice changes nothing.
CREATE TEMP TABLE testdata_wallets (user_id text NOT NULL, currency text NOT NULL, amount numeric NOT NULL);

INSERT INTO testdata_wallets (user_id, currency, amount) VALUES
    ('alice', 'EUR', 100000),
    ('alice', 'USD', 50000),
    ('bob',   'EUR', 100000),
    ('bob',   'USD', 25000),
    ('carol', 'EUR', 100000),
    ('dave',  'EUR', 75000),
    ('erin',  'EUR', 75000),
    ('frank', 'EUR', 50000),
    ('grace', 'EUR', 50000),
    ('heidi', 'EUR', 50000),
    ('ivan',  'EUR', 0),
    ('judy',  'USD', 100000);
