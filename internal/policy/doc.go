// Package policy decides who may do what in custodyd: it maps a peer's Unix
// credentials to a principal, says which API permissions that principal's
// roles carry, and decides each decryption request by participant, purpose,
// time window and requested fields. It owns the policy file format (schema
// version 1, documented with a full example in docs/policy.md) and nothing
// else: it holds no keys and does no logging of its own.
//
// # Decisions
//
// Everything is denied unless the policy allows it.
//
//   - Identify maps a Caller (uid, gid from SO_PEERCRED) to at most one
//     principal. A principal that names the caller's user wins. Otherwise the
//     principals whose groups cover the caller are considered: a group covers
//     a caller when the caller's gid is the group's gid, or when the caller's
//     uid is that of a member of the group as listed in /etc/group. Exactly
//     one such principal identifies the caller; none gives ErrUnknownCaller,
//     and so does more than one (ambiguity is denied, never broken by file
//     order). Parse rejects every ambiguity it can see: a user or group named
//     by two principals, two names of one uid, and a user whom the groups of
//     two principals would cover through /etc/group membership or through
//     the primary gid in the user's passwd entry. The only ambiguity left to
//     run time is a process whose effective gid is not its user's primary
//     gid (newgrp, a setgid program); it is denied.
//   - Authorize checks an API permission against the principal's roles. The
//     roles are taken from the policy, by principal name, never from the
//     Principal value the caller holds, so a principal removed by a reload
//     loses its permissions at once.
//   - AuthorizeDecrypt checks, in order: the principal exists and has role
//     application (ErrDenied), it may act as the participant (ErrNotParticipant),
//     the purpose exists and is granted for that participant (ErrPurpose), one
//     of the matching grants is open at the given instant (ErrOutsideWindow),
//     and every requested field is visible to the purpose (ErrFieldDenied).
//     Every one of these errors also satisfies errors.Is(err, ErrDenied). The
//     result is a Disclosure: the fields the response may carry.
//   - AuthorizeSeal checks that the principal has role application and that
//     each participant of an encrypt is matched by one of its seal_for
//     grants whose transaction patterns (if any) match the transaction id
//     (ErrSealDenied, also an ErrDenied). act_as grants do not allow sealing.
//
// # Name resolution
//
// User and group names are resolved once, by Parse, with os/user (NSS when
// cgo is on, /etc/passwd and /etc/group otherwise). The standard library
// cannot list a group's members, so Parse reads them from /etc/group with a
// small strict reader (one "name:password:gid:members" entry per line; empty
// lines, '#' comments and NIS '+'/'-' lines are skipped; the first entry of a
// name wins, as in glibc). Consequences, by design:
//
//   - Identify does no lookups and no I/O; it reads maps built at load time.
//   - Membership changes on the system take effect at the next reload.
//   - A group that os/user finds but that has no /etc/group entry (a group
//     served only by LDAP or sssd, say) matches by gid only.
//   - A member listed in /etc/group that is not a known user is skipped: the
//     system's file may hold stale names, and a stale name grants nothing.
//   - A user or group named by the policy that does not resolve is a parse
//     error naming it.
//
// # Parsing
//
// Parse is strict: the JSON is read token by token, unknown fields,
// duplicate keys, wrong types, trailing data, and values out of their syntax
// are rejected, and every error is a *FieldError naming the offending value
// by its path, e.g. principals[2].act_as[0].purposes[1]. Parse reports every
// error it finds (up to a bound), joined; each satisfies
// errors.Is(err, ErrInvalid). Time zones are IANA names loaded with
// time.LoadLocation; the package embeds time/tzdata so a host without a zone
// database still loads the same policy. "Local" is rejected: a policy must
// not depend on the daemon's environment.
//
// # Concurrency
//
// A *Policy is immutable once Parse returns and safe for concurrent use.
// Store holds the current *Policy behind an atomic pointer: readers call
// Current and keep using the value they got for the whole request; Reload
// parses the file and swaps the pointer only on success, so a bad file keeps
// the old policy. Reloads are serialized.
//
// # Limits
//
// A policy file is at most MaxFileSize bytes. Load refuses a file that is
// not a regular file, is group- or world-writable, or is owned by someone
// other than root or the daemon's effective uid (ErrUnsafeFile); it does not
// check the directories above it.
package policy
