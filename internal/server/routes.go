package server

import (
	"custody/internal/ceremony"
	"custody/internal/policy"
)

// route is one API endpoint: its pattern (net/http ServeMux syntax), the
// permission a caller needs, the operation name in the access log, and
// the handler.
type route struct {
	pattern string
	perm    policy.Permission
	op      string
	handle  handler
}

// routes is the whole API. docs/api.md documents each entry.
func (s *Server) routes() []route {
	return []route{
		{"GET /v1/health", policy.PermHealth, "health", s.health},
		{"POST /v1/participants", policy.PermParticipantsRegister, "register", s.registerParticipant},
		{"GET /v1/participants/{id}", policy.PermParticipantsRead, "participant", s.showParticipant},
		{"GET /v1/participants/{id}/status", policy.PermStatusRead, "participant.status", s.showStatus},
		{"PUT /v1/participants/{id}/status", policy.PermStatusWrite, "participant.status.set", s.setStatus},
		{"POST /v1/mfa/principals", policy.PermMFAAdmin, "mfa.enroll", s.mfaEnroll},
		{"DELETE /v1/mfa/principals/{principal}", policy.PermMFAAdmin, "mfa.revoke", s.mfaRevoke},
		{"GET /v1/mfa/principals", policy.PermMFAAdmin, "mfa.list", s.mfaList},
		{"POST /v1/mfa/principals/{principal}/confirm", policy.PermMFAAdmin, "mfa.confirm", s.mfaConfirm},
		{"POST /v1/mfa/self", policy.PermMFASelf, "mfa.self-enroll", s.mfaSelfEnroll},
		{"POST /v1/transactions/encrypt", policy.PermEncrypt, "encrypt", s.encrypt},
		{"POST /v1/transactions/encrypt/batch", policy.PermEncrypt, "encrypt", s.encryptBatch},
		{"POST /v1/transactions/decrypt", policy.PermDecrypt, "decrypt", s.decrypt},
		{"POST /v1/transactions/decrypt/batch", policy.PermDecrypt, "decrypt", s.decryptBatch},
		{"GET /v1/log/checkpoint", policy.PermLogRead, "log.checkpoint", s.logCheckpoint},
		{"GET /v1/log/entries", policy.PermLogRead, "log.entries", s.logEntries},
		{"GET /v1/log/proof/inclusion", policy.PermLogRead, "log.proof", s.logInclusion},
		{"GET /v1/log/proof/consistency", policy.PermLogRead, "log.proof", s.logConsistency},
		{"POST /v1/audit/decrypt", policy.PermAuditDecrypt, "audit-decrypt", s.auditDecrypt},
		{"POST /v1/audit/decrypt/batch", policy.PermAuditDecrypt, "audit-decrypt", s.auditDecryptBatch},
		{"POST /v1/envelopes/rewrap", policy.PermRewrap, "rewrap", s.rewrapEnvelopes},
		{"POST /v1/envelopes/rewrap/stream", policy.PermRewrap, "rewrap", s.rewrapEnvelopesStream},
		{"POST /v1/envelopes/inspect", policy.PermEnvelopesInspect, "inspect", s.inspect},
		{"GET /v1/keys", policy.PermKeysAdmin, "keys", s.listKeys},
		{"POST /v1/keys/{id}/rotate", policy.PermKeysAdmin, "key.rotate", s.rotateKey},
		{"POST /v1/keys/{id}/retire", policy.PermKeysAdmin, "key.retire", s.retireKey},
		{"POST /v1/keys/{id}/prove", policy.PermKeysProve, "key.prove", s.proveKey},
		{"GET /v1/ceremony", policy.PermCeremony, "ceremony.status", s.ceremonyStatusRoute},
		{"POST /v1/ceremony/requests", policy.PermCeremony, "ceremony.request", s.ceremonyCreate},
		{"GET /v1/ceremony/requests/{id}", policy.PermCeremony, "ceremony.show", s.ceremonyShow},
		{"POST /v1/ceremony/requests/{id}/approve", policy.PermCeremony, "ceremony.approve", s.ceremonyApprove},
		{"POST /v1/ceremony/requests/{id}/shares", policy.PermCeremony, "ceremony.share", s.ceremonyShare},
		{"GET /v1/ceremony/requests/{id}/outputs/{name}", policy.PermCeremony, "ceremony.fetch", s.ceremonyFetch},
		{"POST /v1/ceremony/genesis", policy.PermCeremony, "ceremony.genesis", s.ceremonyExecute(ceremony.KindGenesis)},
		{"POST /v1/ceremony/backup", policy.PermCeremony, "ceremony.backup", s.ceremonyExecute(ceremony.KindBackup)},
		{"POST /v1/ceremony/restore", policy.PermCeremony, "ceremony.restore", s.ceremonyExecute(ceremony.KindRestore)},
		{"POST /v1/ceremony/rotate", policy.PermCeremony, "ceremony.rotate", s.ceremonyExecute(ceremony.KindRotate)},
		{"POST /v1/ceremony/retire", policy.PermCeremony, "ceremony.retire", s.ceremonyExecute(ceremony.KindRetire)},
	}
}
