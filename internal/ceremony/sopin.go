package ceremony

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"

	"filippo.io/age"
)

// The token's security officer PIN is never stored. custodyd token init
// makes it (GenerateSOPIN), initialises the token with it, splits it M-of-N
// among the officers (SplitSOPIN: one age-encrypted share file each, and a
// public SOPINRecord for the daemon's configuration) and forgets it. A
// backup needs the SO session, so it needs M officers to submit their SO
// PIN shares to the approved backup request; the daemon combines them in
// memory for that one backup and clears them (Backup). So the daemon's
// Unix user, which holds the user PIN, can use keys but never export one.

// SOPINFormat names the SO PIN record's format.
const SOPINFormat = "custody-so-pin v1"

// SOPINSize is the SO PIN's entropy in bytes. The token gets the PIN as
// 2*SOPINSize lowercase hex digits (SOPINText).
const SOPINSize = 32

// SOPINRecord is the public record of one token's SO PIN share set: who
// holds which share and their commitments. It holds no secret.
type SOPINRecord struct {
	Format      string        `json:"format"`
	SetID       string        `json:"set_id"`
	Created     time.Time     `json:"created"`
	TokenLabel  string        `json:"token_label"`
	TokenSerial string        `json:"token_serial"`
	SplitAlg    string        `json:"split_alg"`
	ShareAlg    string        `json:"share_alg"`
	Threshold   int           `json:"threshold"`
	Total       int           `json:"total"`
	Shares      []ShareRecord `json:"shares"`
}

// ShareSet is the set SO PIN shares are checked against.
func (r *SOPINRecord) ShareSet() ShareSet {
	return ShareSet{Kind: SOPINShare, ID: r.SetID, Threshold: r.Threshold, Total: r.Total, Records: r.Shares}
}

// Marshal encodes r as indented JSON.
func (r *SOPINRecord) Marshal() []byte {
	b, _ := json.MarshalIndent(r, "", "  ")
	return append(b, '\n')
}

// GenerateSOPIN returns SOPINSize random bytes: a new SO PIN, in raw form.
func GenerateSOPIN() ([]byte, error) {
	raw := make([]byte, SOPINSize)
	if _, err := rand.Read(raw); err != nil {
		return nil, err
	}
	return raw, nil
}

// SOPINText is the PIN the token is given for raw: lowercase hex. The
// caller clears both.
func SOPINText(raw []byte) []byte { return hex.AppendEncode(nil, raw) }

// SplitSOPIN splits raw (from GenerateSOPIN) threshold-of-len(officers),
// share i+1 age-encrypted to officers[i], for the token labelled
// tokenLabel with serial tokenSerial. It returns the public record and the
// share files (ShareFiles[i] for officers[i]).
func SplitSOPIN(raw []byte, tokenLabel, tokenSerial string, officers []Officer, threshold int, now time.Time) (*SOPINRecord, [][]byte, error) {
	if len(raw) != SOPINSize {
		return nil, nil, fmt.Errorf("%w: SO PIN of %d bytes, want %d", ErrFormat, len(raw), SOPINSize)
	}
	if threshold < 2 || threshold > len(officers) {
		return nil, nil, fmt.Errorf("%w: SO PIN threshold %d of %d officers; want 2 <= M <= N", ErrFormat, threshold, len(officers))
	}
	var id [16]byte
	rand.Read(id[:])
	r := &SOPINRecord{Format: SOPINFormat, SetID: hex.EncodeToString(id[:]), Created: now.UTC().Truncate(time.Second),
		TokenLabel: tokenLabel, TokenSerial: tokenSerial, SplitAlg: SplitAlg, ShareAlg: ShareAlg,
		Threshold: threshold, Total: len(officers)}
	recs, files, err := splitTo(SOPINShare, r.SetID, raw, officers, threshold)
	if err != nil {
		return nil, nil, err
	}
	r.Shares = recs
	return r, files, nil
}

// ParseSOPINRecord parses an SO PIN record strictly (ErrFormat).
func ParseSOPINRecord(b []byte) (*SOPINRecord, error) {
	bad := func(f string, a ...any) (*SOPINRecord, error) {
		return nil, fmt.Errorf("%w: SO PIN record: %s", ErrFormat, fmt.Sprintf(f, a...))
	}
	if len(b) > 1<<20 {
		return bad("too large")
	}
	var r SOPINRecord
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return bad("%v", err)
	}
	if dec.More() {
		return bad("trailing data")
	}
	switch {
	case r.Format != SOPINFormat:
		return bad("format %q, want %q", r.Format, SOPINFormat)
	case r.SplitAlg != SplitAlg || r.ShareAlg != ShareAlg:
		return bad("unknown algorithms")
	case !hexIDRe.MatchString(r.SetID):
		return bad("bad set id")
	case r.TokenLabel == "" || len(r.TokenLabel) > 32 || len(r.TokenSerial) > 16:
		return bad("bad token label or serial")
	case r.Threshold < 2 || r.Threshold > r.Total || r.Total > 255 || len(r.Shares) != r.Total:
		return bad("threshold %d, total %d, %d shares", r.Threshold, r.Total, len(r.Shares))
	}
	if err := checkShareRecords(r.Shares); err != nil {
		return bad("%v", err)
	}
	return &r, nil
}

// checkShareRecords checks the share records of a manifest or SO PIN
// record: indexes 1..n in order, officer names, age recipients, hex
// commitments.
func checkShareRecords(recs []ShareRecord) error {
	for i, s := range recs {
		if s.Index != i+1 || !officerNameRe.MatchString(s.Officer) || len(s.Commitment) != 64 {
			return fmt.Errorf("share record %d", i+1)
		}
		if _, err := hex.DecodeString(s.Commitment); err != nil {
			return fmt.Errorf("share record %d: commitment not hex", i+1)
		}
		if _, err := age.ParseX25519Recipient(s.Recipient); err != nil {
			return fmt.Errorf("share record %d: recipient: %v", i+1, err)
		}
	}
	return nil
}
