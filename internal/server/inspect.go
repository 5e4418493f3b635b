package server

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"custody/internal/envelope"
)

type inspectRequest struct {
	Envelope string `json:"envelope"`
}

type inspectRecipient struct {
	ID         string `json:"id"`
	KeyVersion uint32 `json:"key_version"`
	Algorithm  string `json:"algorithm"`
}

type inspectField struct {
	Name string `json:"name"`
	Size int    `json:"size"` // bytes of the sealed value: ciphertext minus the encoding byte and the GCM tag (compressed size if compressed)
}

// inspectResponse describes an envelope from its header alone.
type inspectResponse struct {
	Version          int                `json:"version"`
	TransactionID    string             `json:"transaction_id"`
	JobID            string             `json:"job_id"`
	CreatedAt        time.Time          `json:"created_at"`
	SealedBy         string             `json:"sealed_by,omitempty"` // v2 only
	SigningKeyID     string             `json:"signing_key_id"`
	SignatureValid   bool               `json:"signature_valid"`
	SignatureError   string             `json:"signature_error,omitempty"` // why not, when not
	Participants     []inspectRecipient `json:"participants"`
	EscrowKeyVersion uint32             `json:"escrow_key_version"`
	PublicData       json.RawMessage    `json:"public_data"`
	Fields           []inspectField     `json:"fields,omitempty"`       // v2: names and sizes
	PayloadSize      int                `json:"payload_size,omitempty"` // v1: one payload, field names unknown
}

// inspect: POST /v1/envelopes/inspect {"envelope"} describes an envelope
// without using any key and without decrypting anything: it parses the
// envelope and checks its header signature against the daemon's public
// signing keys. A signature that does not verify is reported
// (signature_valid false), not refused; an envelope that does not parse is
// refused as by decrypt. Inspect is not a key use and is not recorded in the
// access log.
func (s *Server) inspect(_ context.Context, rq *request) (any, error) {
	var in inspectRequest
	if err := decodeJSON(rq.Request, &in); err != nil {
		return nil, err
	}
	if in.Envelope == "" {
		return nil, badRequest("envelope: required")
	}
	env, err := envelope.ParseText(in.Envelope)
	if err != nil {
		return nil, err
	}
	h := &env.Header
	out := &inspectResponse{
		Version: int(h.Version), TransactionID: h.TransactionID, JobID: h.JobID, CreatedAt: h.CreatedAt,
		SealedBy: h.SealedBy, SigningKeyID: h.SigningKeyID, PublicData: h.PublicFields,
		Participants: make([]inspectRecipient, 0, len(h.Participants)),
	}
	for _, st := range h.Stanzas {
		if st.Kind == envelope.StanzaEscrow {
			out.EscrowKeyVersion = st.KeyVersion
			continue
		}
		out.Participants = append(out.Participants, inspectRecipient{ID: st.ParticipantID, KeyVersion: st.KeyVersion, Algorithm: st.Alg.String()})
	}
	for i, n := range h.FieldNames {
		out.Fields = append(out.Fields, inspectField{Name: n, Size: len(env.Fields[i].Ciphertext) - envelope.TagSize - 1})
	}
	if h.Version == envelope.Version1 {
		out.PayloadSize = len(env.Ciphertext) - envelope.TagSize
	}
	switch err := s.verified.Verify(env, s.d.Keys.SigningKey); {
	case err == nil:
		out.SignatureValid = true
	case errors.Is(err, envelope.ErrSignature):
		out.SignatureError = CodeSignatureInvalid
	default:
		return nil, err
	}
	return out, nil
}
