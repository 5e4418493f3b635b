package server

import (
	"context"
	"errors"

	"custody/internal/api"
	"custody/internal/envelope"
)

// inspect: POST /v1/envelopes/inspect {"envelope"} describes an envelope
// without using any key and without decrypting anything: it parses the
// envelope and checks its header signature against the daemon's public
// signing keys. A signature that does not verify is reported
// (signature_valid false), not refused; an envelope that does not parse is
// refused as by decrypt. Inspect is not a key use and is not recorded in the
// access log.
func (s *Server) inspect(_ context.Context, rq *request) (any, error) {
	var in api.InspectRequest
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
	out := &api.Inspected{
		Version: int(h.Version), TransactionID: h.TransactionID, JobID: h.JobID, CreatedAt: h.CreatedAt,
		SealedBy: h.SealedBy, SigningKeyID: h.SigningKeyID, PublicData: h.PublicFields,
		Participants: make([]api.InspectRecipient, 0, len(h.Participants)),
	}
	for _, st := range h.Stanzas {
		if st.Kind == envelope.StanzaEscrow {
			out.EscrowKeyVersion = st.KeyVersion
			continue
		}
		out.Participants = append(out.Participants, api.InspectRecipient{ID: st.ParticipantID, KeyVersion: st.KeyVersion, Algorithm: st.Alg.String()})
	}
	for i, n := range h.FieldNames {
		out.Fields = append(out.Fields, api.InspectField{Name: n, Size: len(env.Fields[i].Ciphertext) - envelope.TagSize - 1})
	}
	if h.Version == envelope.Version1 {
		out.PayloadSize = len(env.Ciphertext) - envelope.TagSize
	}
	switch err := s.verified.Verify(env, s.d.Keys.SigningKey); {
	case err == nil:
		out.SignatureValid = true
	case errors.Is(err, envelope.ErrSignature):
		out.SignatureError = api.CodeSignatureInvalid
	default:
		return nil, err
	}
	return out, nil
}
