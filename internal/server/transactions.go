package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync"

	"custody/internal/api"
	"custody/internal/auditlog"
	"custody/internal/envelope"
	"custody/internal/keys"
	"custody/internal/policy"
)

func badRequest(format string, args ...any) *apiError {
	return errorf(http.StatusBadRequest, api.CodeBadRequest, format, args...)
}

func invalidID(field string, err error) *apiError {
	return errorf(http.StatusBadRequest, api.CodeInvalidID, "%s: %v", field, err)
}

// encrypt: POST /v1/transactions/encrypt.
func (s *Server) encrypt(ctx context.Context, rq *request) (any, error) {
	var in api.EncryptRequest
	if err := decodeJSON(rq.Request, &in); err != nil {
		return nil, err
	}
	return s.encryptOne(ctx, rq, in)
}

// encryptBatch: POST /v1/transactions/encrypt/batch {"items":[…]}.
func (s *Server) encryptBatch(ctx context.Context, rq *request) (any, error) {
	return runBatch(ctx, s, rq, settled(s.encryptOne))
}

// decrypt: POST /v1/transactions/decrypt.
func (s *Server) decrypt(ctx context.Context, rq *request) (any, error) {
	var in api.DecryptRequest
	if err := decodeJSON(rq.Request, &in); err != nil {
		return nil, err
	}
	return s.decryptOne(ctx, rq, in)
}

// decryptBatch: POST /v1/transactions/decrypt/batch {"items":[…]}.
func (s *Server) decryptBatch(ctx context.Context, rq *request) (any, error) {
	return runBatch(ctx, s, rq, s.startDecrypt)
}

// decodeBatch decodes {"items":[…]}: at least one item, at most
// limits.max_batch_items.
func decodeBatch[In any](s *Server, rq *request) (api.Batch[In], error) {
	var in api.Batch[In]
	if err := decodeJSON(rq.Request, &in); err != nil {
		return in, err
	}
	if len(in.Items) == 0 {
		return in, badRequest("items: empty batch")
	}
	if len(in.Items) > s.d.Limits.MaxBatchItems {
		return in, errorf(http.StatusRequestEntityTooLarge, api.CodeBatchTooLarge, "items: %d items, at most %d per call (limits.max_batch_items)", len(in.Items), s.d.Limits.MaxBatchItems)
	}
	return in, nil
}

// runBatch decodes {"items":[…]} and runs one for each item, keeping the
// results in item order. One item's failure does not stop the others.
//
// Its workers are charged to the caller: the request's own in-flight slot
// runs the first, and every further worker (up to the token's sessions)
// takes another slot of the caller's limits.max_in_flight_per_caller, so a
// caller's batches together never run more workers than it may have
// requests in progress. A further worker is started only while the caller
// holds fewer than half its slots (callerLimiter.acquireExtra): its batches
// cannot use up the slots its next requests need. An item started while the caller's refusal bucket
// is empty is refused with too_many_refusals (recorded through the
// coalescer) without being run.
func runBatch[In, Out any](ctx context.Context, s *Server, rq *request, start func(context.Context, *request, In) func() (*Out, error)) (any, error) {
	in, err := decodeBatch[In](s, rq)
	if err != nil {
		return nil, err
	}
	out := api.BatchResults[Out]{Results: make([]api.BatchResult[Out], len(in.Items))}
	finish := make([]func() (*Out, error), len(in.Items))
	uid := rq.peer.key()
	workers := 1
	for workers < min(s.d.Token.Info().Sessions, len(in.Items)) && s.inFlight.acquireExtra(uid) {
		workers++
	}
	defer func() {
		for range workers - 1 {
			s.inFlight.release(uid)
		}
	}()
	next := make(chan int)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if s.refusals.exhausted(uid) {
					err := s.tooManyRefusals(rq)
					if rerr := s.recordRefusal(ctx, rq, rq.route, rq.routeOp, err); rerr != nil {
						err = rerr
					}
					finish[i] = func() (*Out, error) { return nil, err }
					continue
				}
				finish[i] = start(ctx, rq, in.Items[i])
			}
		}()
	}
	for i := range in.Items {
		next <- i
	}
	close(next)
	wg.Wait()
	// Every item's device work is done; now wait for the entries still
	// being made durable (startDecrypt) before anything is released.
	for i, f := range finish {
		res, err := f()
		if err != nil {
			out.Results[i].Error = classify(err).wire()
		} else {
			out.Results[i].Result = res
		}
	}
	return out, nil
}

// settled adapts an operation that finishes in one step to runBatch.
func settled[In, Out any](one func(context.Context, *request, In) (*Out, error)) func(context.Context, *request, In) func() (*Out, error) {
	return func(ctx context.Context, rq *request, in In) func() (*Out, error) {
		res, err := one(ctx, rq, in)
		return func() (*Out, error) { return res, err }
	}
}

// encryptOne seals one transaction for its participants and the escrow key,
// records the decision, and returns the envelope. Once every check passed
// the whole entry is known (participants, sealer, signing key), so it is
// queued for the log before the sealing starts and the envelope waits for
// it to be durable, as an allowed decrypt's does: the fdatasync overlaps
// the seal. Sealing that fails after that adds a failed entry saying the
// allowed one was not released (docs/auditlog.md, "An allowed decrypt").
func (s *Server) encryptOne(ctx context.Context, rq *request, in api.EncryptRequest) (*api.Encrypted, error) {
	entry := auditlog.Entry{Operation: "encrypt", TransactionID: in.TransactionID, JobID: in.JobID, Participants: in.Participants}
	job, err := s.authorizeSeal(ctx, rq, in, &entry)
	if err != nil {
		if rerr := s.record(ctx, rq, entry, err); rerr != nil {
			return nil, rerr
		}
		return nil, err
	}
	defer job.clear()
	logged := s.startRecord(ctx, rq, entry, nil)
	res, err := job.seal(ctx, s.d.Token)
	if err := s.settle(ctx, rq, entry, "sealing", err, logged()); err != nil {
		return nil, err
	}
	return res, nil
}

// settle ends an operation whose allowed entry was handed to the log
// before its work (startRecord): workErr is the work's error, lerr the
// entry's. Work that failed after a durable allowed entry is recorded as a
// second, failed entry whose detail says the first was not released (what
// names the work); a failed log refuses the operation. It returns what the
// caller answers with; nil means the result may go.
func (s *Server) settle(ctx context.Context, rq *request, entry auditlog.Entry, what string, workErr, lerr error) error {
	if workErr == nil {
		return lerr
	}
	if lerr == nil {
		entry.Detail = "not released: " + what + " failed after this request's allowed entry was written"
	}
	if rerr := s.record(ctx, rq, entry, workErr); rerr != nil {
		return rerr
	}
	return workErr
}

// sealJob is an authorized encrypt: what SealV2 needs, and the answer
// without its envelope.
type sealJob struct {
	in     envelope.SealInput
	signer *keys.Signer
	out    *api.Encrypted
}

// seal seals the envelope (software stanzas, fields on dev, header signed
// in the HSM) and returns the answer.
func (j *sealJob) seal(ctx context.Context, dev envelope.FieldSealer) (*api.Encrypted, error) {
	env, err := envelope.SealV2(ctx, j.in, j.signer, dev)
	if err != nil {
		return nil, err
	}
	j.out.Envelope = env.Text()
	return j.out, nil
}

// clear clears the field values (plaintext).
func (j *sealJob) clear() {
	for _, f := range j.in.Fields {
		clear(f.Value)
	}
}

// authorizeSeal runs every check of an encrypt, in order (the request, the
// seal grant, the payload, the participants' keys and status, the escrow
// and signing keys), fills entry with what is known and returns the job;
// nothing has touched a key.
func (s *Server) authorizeSeal(ctx context.Context, rq *request, in api.EncryptRequest, entry *auditlog.Entry) (*sealJob, error) {
	if err := envelope.ValidateID(in.TransactionID); err != nil {
		return nil, invalidID("transaction_id", err)
	}
	if err := envelope.ValidateID(in.JobID); err != nil {
		return nil, invalidID("job_id", err)
	}
	if len(in.Participants) == 0 {
		return nil, badRequest("participants: at least one participant is required")
	}
	for i, id := range in.Participants {
		if err := envelope.ValidateID(id); err != nil {
			return nil, invalidID(fmt.Sprintf("participants[%d]", i), err)
		}
	}
	// Seal grants come before any key lookup: a refused seal learns
	// nothing about which participants are registered.
	if err := rq.policy.AuthorizeSeal(rq.principal, in.TransactionID, in.Participants); err != nil {
		return nil, err
	}
	entry.SealedBy = rq.principal.Name
	if len(in.PublicData) == 0 || string(in.PublicData) == "null" {
		in.PublicData = json.RawMessage("{}")
	}
	public, err := envelope.CanonicalJSON(in.PublicData)
	if err != nil {
		return nil, badRequest("public_data: %v", err)
	}
	if len(in.Confidential) == 0 {
		return nil, badRequest("confidential: required (a JSON object of the fields to encrypt)")
	}
	fields, err := envelope.SplitFields(in.Confidential)
	if err != nil {
		if errors.Is(err, envelope.ErrTooLarge) {
			return nil, err
		}
		return nil, badRequest("confidential: %v", err)
	}
	authorized := false
	defer func() {
		if !authorized { // refused: no job for the caller to clear
			for _, f := range fields {
				clear(f.Value)
			}
		}
	}()
	recipients := make([]envelope.Recipient, 0, len(in.Participants))
	out := &api.Encrypted{TransactionID: in.TransactionID, Algorithm: api.Algorithm, SealedBy: rq.principal.Name}
	for _, id := range in.Participants {
		v, err := s.d.Keys.Active(id)
		if err != nil {
			return nil, err
		}
		if err := s.checkStatus(ctx, id, rq.policy.SealStatus()); err != nil { // status.go
			return nil, err
		}
		recipients = append(recipients, envelope.Recipient{ID: id, KeyVersion: v.Number, Alg: v.Alg, Public: v.Public})
		out.Recipients = append(out.Recipients, api.Recipient{ID: id, KeyVersion: v.Number})
	}
	escrow, err := s.d.Keys.Escrow()
	if err != nil {
		return nil, err
	}
	signer, err := s.d.Keys.Signer()
	if err != nil {
		return nil, err
	}
	entry.KeyLabel = signer.Label()
	out.EscrowKeyVersion = escrow.Number
	authorized = true
	return &sealJob{signer: signer, out: out, in: envelope.SealInput{
		TransactionID: in.TransactionID,
		JobID:         in.JobID,
		PublicFields:  public,
		Fields:        fields,
		SealedBy:      rq.principal.Name,
		Compress:      in.Compress,
		Participants:  recipients,
		Escrow:        envelope.Recipient{KeyVersion: escrow.Number, Alg: escrow.Alg, Public: escrow.Public},
		CreatedAt:     s.d.Now(),
	}}, nil
}

// decryptOne opens one envelope as a participant for a purpose: parse and
// verify in software, ask the policy (and the status and factor checks),
// open on the device, record, release (startDecrypt, then its finish).
func (s *Server) decryptOne(ctx context.Context, rq *request, in api.DecryptRequest) (*api.Decrypted, error) {
	return s.startDecrypt(ctx, rq, in)()
}

// startDecrypt does a decrypt's work and returns the function that
// releases its result. For an envelope v2 the whole entry is known before
// the device is asked (the fields the purpose may see are named in the
// signed header), so it is handed to the log as the device starts and
// finish waits for it to be durable: the fdatasync overlaps the device
// work, and in a batch every item's (finish runs after all items' device
// work). A v1 envelope's fields are known only after the open: its entry is
// written after it, before startDecrypt returns.
//
// finish releases the result only once its entry is durable. If the log
// fails the result is dropped (log_unavailable). If the device failed
// after the allowed entry was handed to the log, a second entry records
// the failure with its code and says that the allowed entry was not
// released (docs/auditlog.md, "An allowed decrypt").
func (s *Server) startDecrypt(ctx context.Context, rq *request, in api.DecryptRequest) (finish func() (*api.Decrypted, error)) {
	entry := auditlog.Entry{Operation: "decrypt", Participant: in.As, Purpose: in.Purpose}
	plan, err := s.authorizeOpen(ctx, rq, in, &entry)
	if err == nil && plan.env.Header.Version == envelope.Version2 {
		entry.Fields = slices.Sorted(slices.Values(plan.names))
		logged := s.startRecord(ctx, rq, entry, nil)
		res, err := s.openV2(ctx, plan)
		return func() (*api.Decrypted, error) {
			if err := s.settle(ctx, rq, entry, "the device", err, logged()); err != nil {
				if res != nil {
					for _, v := range res.Confidential {
						clear(v)
					}
				}
				return nil, err
			}
			return res, nil
		}
	}
	var res *api.Decrypted
	if err == nil {
		res, err = s.openV1(ctx, plan, &entry)
	}
	if rerr := s.record(ctx, rq, entry, err); rerr != nil {
		return func() (*api.Decrypted, error) { return nil, rerr }
	}
	return func() (*api.Decrypted, error) { return res, err }
}

// openPlan is an authorized decrypt: the verified envelope, the caller's
// stanza and key, what the purpose may see.
type openPlan struct {
	env        *envelope.Envelope
	stanza     int
	key        keys.Version
	disclosure policy.Disclosure
	names      []string // v2: the fields the purpose may see, in header order
}

// authorizeOpen runs every check of a participant decrypt, in order: the
// request, the envelope's form and signature, the transaction, the policy,
// the participant's status, the second factor, the stanza and its key
// version. It fills entry with what is known and returns what the device
// must open; nothing has touched a key.
func (s *Server) authorizeOpen(ctx context.Context, rq *request, in api.DecryptRequest, entry *auditlog.Entry) (*openPlan, error) {
	if in.Envelope == "" {
		return nil, badRequest("envelope: required")
	}
	if err := envelope.ValidateID(in.As); err != nil {
		return nil, invalidID("as", err)
	}
	if in.Purpose == "" {
		return nil, badRequest("purpose: required")
	}
	env, err := envelope.ParseText(in.Envelope)
	if err != nil {
		return nil, err
	}
	h := &env.Header
	entry.TransactionID, entry.JobID = h.TransactionID, h.JobID
	if err := s.verified.Verify(env, s.d.Keys.SigningKey); err != nil {
		return nil, err
	}
	if in.TransactionID != "" && in.TransactionID != h.TransactionID {
		return nil, errorf(http.StatusBadRequest, api.CodeTransactionMismatch, "the envelope belongs to transaction %q, not %q", h.TransactionID, in.TransactionID)
	}
	disclosure, err := rq.policy.AuthorizeDecrypt(rq.principal, in.As, in.Purpose, in.Fields, s.d.Now())
	if err != nil {
		return nil, err
	}
	if err := s.checkStatus(ctx, in.As, rq.policy.DecryptStatus(in.Purpose)); err != nil { // status.go
		return nil, err
	}
	if rq.policy.NeedsFactor(rq.principal, "decrypt", in.Purpose) {
		if err := s.requireFactor(ctx, rq); err != nil { // mfa.go
			return nil, err
		}
	}
	i, err := env.ParticipantStanza(in.As)
	if err != nil {
		return nil, err
	}
	key, err := s.d.Keys.ParticipantVersion(in.As, h.Stanzas[i].KeyVersion)
	if err != nil {
		return nil, err
	}
	plan := &openPlan{env: env, stanza: i, key: key, disclosure: disclosure}
	if h.Version == envelope.Version2 {
		entry.SealedBy = h.SealedBy
		plan.names = disclosure.Select(h.FieldNames)
		if len(plan.names) > 0 {
			entry.KeyLabel, entry.KeyVersion = key.Label, int(key.Number)
		}
	} else {
		entry.KeyLabel, entry.KeyVersion = key.Label, int(key.Number)
	}
	return plan, nil
}

// openV2 derives and decrypts on the device only the fields the purpose
// may see; the others never reach the device.
func (s *Server) openV2(ctx context.Context, p *openPlan) (*api.Decrypted, error) {
	h := &p.env.Header
	shown, err := s.openFields(ctx, p.env, p.stanza, p.key.Label, p.key.Public, p.names)
	if err != nil {
		return nil, err
	}
	return &api.Decrypted{TransactionID: h.TransactionID, JobID: h.JobID, Confidential: shown, SealedBy: h.SealedBy}, nil
}

// openV1 decrypts a version-1 envelope's whole payload on the device and
// filters the fields the purpose may see; it records their names in entry.
func (s *Server) openV1(ctx context.Context, p *openPlan, entry *auditlog.Entry) (*api.Decrypted, error) {
	h := &p.env.Header
	plaintext, err := s.d.Token.Open(ctx, p.env.OpenRequest(p.stanza, p.key.Label, p.key.Public))
	if err != nil {
		return nil, err
	}
	defer clear(plaintext)
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(plaintext, &fields); err != nil {
		// Authenticated but not a JSON object: not sealed by this daemon's encrypt.
		return nil, fmt.Errorf("%w: payload is not a JSON object", envelope.ErrMalformed)
	}
	shown := p.disclosure.Filter(fields)
	entry.Fields = sortedKeys(shown)
	return &api.Decrypted{TransactionID: h.TransactionID, JobID: h.JobID, Confidential: shown}, nil
}

// openFields derives and decrypts, on the device, the named fields of a
// version-2 envelope through stanza i (names must be among its field
// names) and returns them by name. No name: no device call, an empty map.
func (s *Server) openFields(ctx context.Context, env *envelope.Envelope, stanza int, label string, public []byte, names []string) (map[string]json.RawMessage, error) {
	shown := make(map[string]json.RawMessage, len(names))
	if len(names) == 0 {
		return shown, nil
	}
	idx := make([]int, len(names))
	for k, n := range names {
		idx[k] = env.FieldIndex(n)
	}
	req, err := env.OpenFieldsRequest(stanza, label, public, idx)
	if err != nil {
		return nil, err
	}
	pts, err := s.d.Token.OpenFields(ctx, req)
	if err != nil {
		return nil, err
	}
	defer func() {
		for _, pt := range pts {
			clear(pt)
		}
	}()
	for k, sealed := range pts {
		pt, err := envelope.DecodeValue(sealed)
		if err != nil {
			return nil, fmt.Errorf("field %q: %w", names[k], err)
		}
		pt = bytes.Clone(pt) // the answer outlives the device's buffer, cleared above
		if !json.Valid(pt) {
			// Authenticated but not JSON: not sealed by this daemon's encrypt.
			return nil, fmt.Errorf("%w: field %q is not a JSON value", envelope.ErrMalformed, names[k])
		}
		shown[names[k]] = pt
	}
	return shown, nil
}

func sortedKeys(m map[string]json.RawMessage) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
