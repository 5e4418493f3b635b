package auditlog

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"
)

// FormatVersion is the version of the entry encoding (docs/auditlog.md).
// It is the "v" member of every entry.
const FormatVersion = 1

// MaxEntryBytes bounds one encoded entry. Record refuses larger entries
// with ErrInvalidEntry; the parser rejects them.
const MaxEntryBytes = 256 << 10

// ErrMalformed: bytes that are not a valid, canonical entry of this format
// version. Errors from ParseEntry wrap it.
var ErrMalformed = errors.New("auditlog: malformed entry")

// leafV1 is the encoded form of an entry: the version, the entry's index in
// the log, then Entry's members, in the order encoding/json writes them.
type leafV1 struct {
	V     int   `json:"v"`
	Index int64 `json:"i"`
	Entry
}

// EncodeEntry returns the canonical encoding of e as the entry at index: one
// line of JSON without its newline. These bytes are the Merkle tree leaf.
// e.Time is written in UTC.
func EncodeEntry(index int64, e Entry) ([]byte, error) {
	if err := checkEntry(e); err != nil {
		return nil, err
	}
	e.Time = e.Time.UTC()
	b, err := json.Marshal(leafV1{V: FormatVersion, Index: index, Entry: e})
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidEntry, err)
	}
	if len(b) > MaxEntryBytes {
		return nil, fmt.Errorf("%w: %d bytes encoded, at most %d", ErrInvalidEntry, len(b), MaxEntryBytes)
	}
	return b, nil
}

func checkEntry(e Entry) error {
	switch {
	case e.Time.IsZero():
		return fmt.Errorf("%w: no time", ErrInvalidEntry)
	case e.Time.Year() < 1 || e.Time.Year() > 9999:
		return fmt.Errorf("%w: time out of range", ErrInvalidEntry)
	case e.Operation == "":
		return fmt.Errorf("%w: no operation", ErrInvalidEntry)
	}
	switch e.Outcome {
	case Allowed, Denied, Failed:
	default:
		return fmt.Errorf("%w: outcome %q", ErrInvalidEntry, e.Outcome)
	}
	return nil
}

// ParseEntry parses one encoded entry strictly: the format version must be
// FormatVersion, no member may be unknown, missing where required, or out
// of place, and the bytes must be exactly the canonical encoding
// EncodeEntry would produce (so one entry has one leaf hash). If index >= 0
// the entry must carry that index. Errors wrap ErrMalformed.
//
// Canonical entries are recognised by a hand-written decoder of the fixed
// schema (parseCanonical); anything it does not accept, it hands to
// parseEntryJSON, the encoding/json decoder and re-encoder that defines the
// format and produces every error.
func ParseEntry(b []byte, index int64) (int64, Entry, error) {
	if i, e, ok := parseCanonical(b, true); ok && (index < 0 || i == index) {
		return i, e, nil
	}
	return parseEntryJSON(b, index)
}

// parseEntryJSON is ParseEntry by encoding/json: decode strictly, then
// re-encode and compare. It is the reference parseCanonical is fuzzed
// against (FuzzParseCanonical).
func parseEntryJSON(b []byte, index int64) (int64, Entry, error) {
	if len(b) > MaxEntryBytes {
		return 0, Entry{}, fmt.Errorf("%w: %d bytes", ErrMalformed, len(b))
	}
	var probe struct {
		V *int `json:"v"`
	}
	if err := json.Unmarshal(b, &probe); err != nil {
		return 0, Entry{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if probe.V == nil || *probe.V != FormatVersion {
		return 0, Entry{}, fmt.Errorf("%w: format version is not %d", ErrMalformed, FormatVersion)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var l leafV1
	if err := dec.Decode(&l); err != nil {
		return 0, Entry{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if index >= 0 && l.Index != index {
		return l.Index, Entry{}, fmt.Errorf("%w: entry claims index %d, found at index %d", ErrMalformed, l.Index, index)
	}
	if l.Index < 0 {
		return l.Index, Entry{}, fmt.Errorf("%w: negative index", ErrMalformed)
	}
	if err := checkEntry(l.Entry); err != nil {
		return l.Index, Entry{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	canon, err := EncodeEntry(l.Index, l.Entry)
	if err != nil {
		return l.Index, Entry{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if !bytes.Equal(canon, b) {
		return l.Index, Entry{}, fmt.Errorf("%w: not in canonical form", ErrMalformed)
	}
	return l.Index, l.Entry, nil
}

// validUTF8 replaces invalid UTF-8 in every string of e with U+FFFD, as the
// JSON encoding would, so that what is written parses back to itself. Some
// strings come from outside (a caller's executable path, forwarded end-user
// context); without this, one bad byte would make the entry non-canonical
// and the log unreadable from there on.
func validUTF8(e Entry) Entry {
	fix := func(s *string) {
		if !utf8.ValidString(*s) {
			*s = strings.ToValidUTF8(*s, "\uFFFD")
		}
	}
	for _, p := range []*string{&e.Operation, &e.Caller.Executable, &e.Principal, &e.TransactionID, &e.JobID,
		&e.Participant, &e.KeyLabel, &e.Purpose, &e.EndUser.IP, &e.EndUser.UserAgent, &e.EndUser.RequestID,
		&e.CourtOrder, &e.DocumentHash, &e.Code, &e.Detail} {
		fix(p)
	}
	e.Participants = fixAll(e.Participants, fix)
	e.Fields = fixAll(e.Fields, fix)
	return e
}

func fixAll(list []string, fix func(*string)) []string {
	for i := range list {
		if !utf8.ValidString(list[i]) {
			list = slices.Clone(list)
			for j := range list {
				fix(&list[j])
			}
			return list
		}
	}
	return list
}
