package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"custody/internal/api"
	"custody/internal/auditlog"
	"custody/internal/envelope"
	"custody/internal/keys"
	"custody/internal/orders"
)

// OrderChecker decides audit decrypts against court orders
// (*orders.Checker in the daemon). Authorize must return nil only when the
// order named by orderID allows auditor to open that transaction for
// purpose now, having consumed one use; any other answer is a refusal, and
// its error matches orders.ErrDenied (the order refuses) or orders.ErrVault
// (no answer from Vault). It must not cache a positive decision.
type OrderChecker interface {
	Authorize(ctx context.Context, auditor, orderID, purpose, txID, jobID string, createdAt time.Time) (orders.Grant, error)
}

// auditDecrypt: POST /v1/audit/decrypt.
func (s *Server) auditDecrypt(ctx context.Context, rq *request) (any, error) {
	var in api.AuditDecryptRequest
	if err := decodeJSON(rq.Request, &in); err != nil {
		return nil, err
	}
	return s.auditDecryptOne(ctx, rq, in)
}

// auditDecryptBatch: POST /v1/audit/decrypt/batch {"items":[…]}. Each item
// is checked against its order on its own and consumes its own use.
func (s *Server) auditDecryptBatch(ctx context.Context, rq *request) (any, error) {
	return runBatch(ctx, s, rq, settled(s.auditDecryptOne))
}

// auditDecryptOne opens one envelope through its escrow stanza under a
// court order, in this order: parse and verify the envelope → the order
// (Deps.Orders.Authorize, which consumes a use) → record the decision, with
// the order's id, KV version, document hash and use number → unwrap on the
// device → release every confidential field (the order's purpose is the
// disclosure). A refusal at any step is recorded and the device is never
// asked. A failure after the grant is recorded as a second entry.
func (s *Server) auditDecryptOne(ctx context.Context, rq *request, in api.AuditDecryptRequest) (*api.AuditDecrypted, error) {
	entry := auditlog.Entry{Operation: "audit-decrypt", Purpose: in.Purpose}
	env, key, grant, err := s.auditAuthorize(ctx, rq, in, &entry)
	if err != nil {
		if rerr := s.record(ctx, rq, entry, err); rerr != nil {
			return nil, rerr
		}
		return nil, err
	}
	entry.OrderVersion, entry.DocumentHash, entry.UseNumber = grant.Version, grant.DocumentSHA256, grant.Use
	// The key only now that it will be used; every field, since the order's
	// purpose is the disclosure.
	entry.KeyLabel, entry.KeyVersion = key.Label, int(key.Number)
	entry.Fields = []string{"*"}
	entry.SealedBy = env.Header.SealedBy
	if rerr := s.record(ctx, rq, entry, nil); rerr != nil {
		return nil, rerr // the use is spent; nothing is opened
	}
	res, err := s.escrowOpen(ctx, env, env.EscrowStanza(), key.Label, key.Public)
	if err != nil {
		entry.Fields = nil
		if rerr := s.record(ctx, rq, entry, err); rerr != nil {
			return nil, rerr
		}
		return nil, err
	}
	res.Order = api.Order{ID: grant.OrderID, Version: grant.Version, DocumentSHA256: grant.DocumentSHA256, Use: grant.Use, MaxUses: grant.MaxUses}
	return res, nil
}

// auditAuthorize checks the request, the envelope, that the token knows
// the escrow key version its stanza names (before a use is spent), and
// last the order.
func (s *Server) auditAuthorize(ctx context.Context, rq *request, in api.AuditDecryptRequest, entry *auditlog.Entry) (*envelope.Envelope, keys.Version, orders.Grant, error) {
	var none keys.Version
	if err := s.requireGenesis(ctx); err != nil { // ceremony.go
		return nil, none, orders.Grant{}, err
	}
	if s.d.Orders == nil {
		return nil, none, orders.Grant{}, errorf(http.StatusServiceUnavailable, api.CodeVaultUnavailable, "audit decrypt is not configured: the daemon has no Vault section")
	}
	if in.Envelope == "" {
		return nil, none, orders.Grant{}, badRequest("envelope: required")
	}
	if in.Authorization == "" {
		return nil, none, orders.Grant{}, badRequest("authorization: required (the court order's id)")
	}
	if !orders.ValidID(in.Authorization) {
		return nil, none, orders.Grant{}, badRequest("authorization: %q is not an order id", in.Authorization)
	}
	entry.CourtOrder = in.Authorization
	if in.Purpose == "" {
		return nil, none, orders.Grant{}, badRequest("purpose: required (the court order's purpose)")
	}
	env, err := envelope.ParseText(in.Envelope)
	if err != nil {
		return nil, none, orders.Grant{}, err
	}
	h := &env.Header
	entry.TransactionID, entry.JobID = h.TransactionID, h.JobID
	if err := s.verified.Verify(env, s.d.Keys.SigningKey); err != nil {
		return nil, none, orders.Grant{}, err
	}
	i := env.EscrowStanza()
	if i < 0 {
		return nil, none, orders.Grant{}, fmt.Errorf("%w: no escrow stanza", envelope.ErrMalformed)
	}
	key, err := s.d.Keys.EscrowVersion(h.Stanzas[i].KeyVersion)
	if err != nil {
		return nil, none, orders.Grant{}, err
	}
	// A second factor the policy asks for was checked at the door (serve,
	// mfa.go): before any use of the order is spent.
	grant, err := s.d.Orders.Authorize(ctx, rq.principal.Name, in.Authorization, in.Purpose, h.TransactionID, h.JobID, h.CreatedAt)
	if err != nil {
		if errors.Is(err, orders.ErrVault) {
			s.d.Log.Warn("court order check failed", "order", in.Authorization, "err", err)
		}
		return nil, none, orders.Grant{}, err
	}
	return env, key, grant, nil
}

// escrowOpen unwraps the DEK through escrow stanza i on the device with
// the escrow key version the stanza names, and returns every confidential
// field.
func (s *Server) escrowOpen(ctx context.Context, env *envelope.Envelope, i int, label string, public []byte) (*api.AuditDecrypted, error) {
	if env.Header.Version == envelope.Version2 {
		fields, err := s.openFields(ctx, env, i, label, public, env.Header.FieldNames)
		if err != nil {
			return nil, err
		}
		return &api.AuditDecrypted{TransactionID: env.Header.TransactionID, JobID: env.Header.JobID, Confidential: fields, SealedBy: env.Header.SealedBy}, nil
	}
	plaintext, err := s.d.Token.Open(ctx, env.OpenRequest(i, label, public))
	if err != nil {
		return nil, err
	}
	defer clear(plaintext)
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(plaintext, &fields); err != nil {
		return nil, fmt.Errorf("%w: payload is not a JSON object", envelope.ErrMalformed)
	}
	return &api.AuditDecrypted{TransactionID: env.Header.TransactionID, JobID: env.Header.JobID, Confidential: fields}, nil
}
