# custodyd's Vault policy: least privilege for the audit decrypt gate.
# Assumes the KV v2 mount "secret" and the default paths of internal/orders
# (vault.kv_mount, vault.orders_path, vault.revocations_path, vault.uses_path);
# change the paths here when the configuration changes them.
#
# Vault's "default" policy, attached to every token, already allows
# auth/token/lookup-self, renew-self and revoke-self, which custodyd uses to
# keep its token alive and to revoke an AppRole token on shutdown.

# Orders and revocations: read only (including older versions: custodyd
# reads version 1 of an order to check that its body was never replaced).
# custodyd never writes an order.
path "secret/data/custody/orders/*" {
  capabilities = ["read"]
}

path "secret/data/custody/revocations/*" {
  capabilities = ["read"]
}

# Use counters: read, create the first one (cas=0), update with check-and-set.
# No delete, no destroy, no metadata: a counter never goes back.
path "secret/data/custody/uses/*" {
  capabilities = ["read", "create", "update"]
}

# Participant status (internal/compliance, docs/compliance.md): read, create
# the first record (cas=0), replace it with check-and-set. Every change
# goes through custodyd, which records it in its access log; custodyd holds
# no delete, destroy or metadata capability, so the history of versions
# stays in Vault. Change the path when participant_status.path changes it.
path "secret/data/custody/participants/*" {
  capabilities = ["read", "create", "update"]
}

# Second-factor state (internal/mfa): the last accepted TOTP step, failures
# and lock of each principal, shared by the fleet (replay and lockout hold
# on every daemon). Read, create, update with check-and-set; no delete.
path "secret/data/custody/mfa/*" {
  capabilities = ["read", "create", "update"]
}

# Fleet leases (internal/orders/lease.go): one entry per coordinated action
# (a participant key's scheduled or manual rotation), taken and handed over
# with check-and-set so that only one daemon of a fleet performs it.
path "secret/data/custody/leases/*" {
  capabilities = ["read", "create", "update"]
}
