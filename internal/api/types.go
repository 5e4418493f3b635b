package api

import (
	"encoding/json"
	"time"

	"golang.org/x/mod/sumdb/tlog"
)

// Algorithm names the suite of every envelope the daemon seals.
const Algorithm = "AES-256-GCM+X25519"

// --- health: GET /v1/health ---

// Health is the daemon's state and the caller's principal.
type Health struct {
	Status       string       `json:"status"` // "ok", or the error code of what is wrong
	Version      string       `json:"version,omitempty"`
	Token        Token        `json:"token"`
	Capabilities Capabilities `json:"capabilities"`
	Profile      string       `json:"capability_summary"`
	EscrowKey    string       `json:"escrow_key,omitempty"`
	SigningKey   string       `json:"signing_key,omitempty"`
	Policy       string       `json:"policy"`
	Principal    string       `json:"you"`
	AccessLog    *LogStatus   `json:"access_log,omitempty"`
	// TokenRescans counts the registry's rereads of the token since start
	// (periodic, and after lookup misses; bounded: docs/fleet.md).
	TokenRescans uint64 `json:"token_rescans"`
	// ParticipantStatus says whether participant status is checked
	// ("on: …", or "off: …" and why).
	ParticipantStatus string `json:"participant_status,omitempty"`
}

// Token describes the HSM token and the daemon's session pool (hsm.TokenInfo).
type Token struct {
	Label        string `json:"Label"`
	Serial       string `json:"Serial"`
	Manufacturer string `json:"Manufacturer"`
	Model        string `json:"Model"`
	Sessions     int    `json:"Sessions"` // the session pool's size
	Rebuilds     uint64 `json:"Rebuilds"` // session-pool rebuilds since start
	Recycles     uint64 `json:"Recycles"` // rebuilds that also re-initialized the module
	InUse        int    `json:"InUse"`    // sessions borrowed right now
	Yields       uint64 `json:"Yields"`   // background batches that gave their session back
}

// Capabilities is what the token was probed to support (hsm.Capabilities).
type Capabilities struct {
	X25519         string `json:"X25519"` // how X25519 keys are generated, "" for not at all
	HKDF           bool   `json:"HKDF"`
	ECDHDerive     bool   `json:"ECDHDerive"`
	AESKeyWrapPad  bool   `json:"AESKeyWrapPad"`
	AESGCM         bool   `json:"AESGCM"`
	ECBEncryptData bool   `json:"ECBEncryptData"`
	ECDSA          bool   `json:"ECDSA"`
	EdDSA          bool   `json:"EdDSA"`
	AESCMAC        bool   `json:"AESCMAC"`
}

// LogStatus is the access log's state (auditlog.Status).
type LogStatus struct {
	Entries        int64  `json:"entries"`
	CheckpointSize int64  `json:"checkpoint_size"`
	Writable       bool   `json:"writable"`
	Pending        int    `json:"pending"`         // appends queued for the next group commit
	Error          string `json:"error,omitempty"` // why it cannot write, or why the last checkpoint failed
}

// --- participants: POST /v1/participants, GET /v1/participants/{id} ---

// RegisterRequest registers a participant: its first key pair on the token.
type RegisterRequest struct {
	ID string `json:"id"`
}

// KeyVersion is one version of a participant key.
type KeyVersion struct {
	Version   uint32    `json:"key_version"`
	Algorithm string    `json:"algorithm"`
	PublicKey string    `json:"public_key"` // base64 (standard, padded)
	SHA256    string    `json:"sha256"`     // fingerprint of the public key, hex
	Created   time.Time `json:"created,omitzero"`
}

// Registered answers RegisterRequest: the id and its first key version.
type Registered struct {
	ID string `json:"id"`
	KeyVersion
}

// Participant lists a participant's key versions, oldest first.
type Participant struct {
	ID       string       `json:"id"`
	Active   uint32       `json:"active_version"`
	Versions []KeyVersion `json:"versions"`
}

// --- participant status: GET and PUT /v1/participants/{id}/status (docs/compliance.md) ---

// ParticipantStatus is a participant's compliance status as Vault holds
// it. Version 0 means no record (Status is absent); Invalid says why the
// current version is refused (deleted in Vault, or malformed: every check
// for the participant fails closed until a new version is written).
type ParticipantStatus struct {
	ID      string          `json:"id"`
	Version int             `json:"version"`
	Status  json.RawMessage `json:"status,omitempty"` // a compliance.Record (docs/compliance.md)
	Updated *time.Time      `json:"updated,omitempty"`
	By      string          `json:"by,omitempty"` // the principal that set it
	Reason  string          `json:"reason,omitempty"`
	// Reference is the compliance team's case or document reference.
	Reference string `json:"reference,omitempty"`
	Invalid   string `json:"invalid,omitempty"`
}

// StatusChange replaces a participant's whole status record if its
// current version is Version (0: it has none yet), so that two reviewers
// cannot overwrite each other unseen.
type StatusChange struct {
	Version   int             `json:"version"`
	Status    json.RawMessage `json:"status"` // a compliance.Record
	Reason    string          `json:"reason"`
	Reference string          `json:"reference"`
}

// StatusSet is the answer to a StatusChange.
type StatusSet struct {
	ID              string `json:"id"`
	Version         int    `json:"version"`
	PreviousVersion int    `json:"previous_version"`
}

// --- second factor: /v1/mfa/principals[/{principal}[/confirm]], /v1/mfa/self ---

// MFAEnroll asks for a new TOTP factor for a principal of the policy.
type MFAEnroll struct {
	Principal string `json:"principal"`
}

// MFAEnrolled carries the otpauth:// URI with the seed, shown once. A
// self-enrollment (POST /v1/mfa/self) is pending, with the id its
// confirmation names.
type MFAEnrolled struct {
	Principal  string `json:"principal"`
	URI        string `json:"uri"`
	Enrollment string `json:"enrollment,omitempty"`
	Pending    bool   `json:"pending,omitempty"`
}

// MFAConfirm names the pending enrollment an admin confirms.
type MFAConfirm struct {
	Enrollment string `json:"enrollment"`
}

// MFAConfirmed is the answer to an MFAConfirm.
type MFAConfirmed struct {
	Principal   string `json:"principal"`
	Enrollment  string `json:"enrollment"`
	ConfirmedBy string `json:"confirmed_by"`
}

// MFAList is GET /v1/mfa/principals: who has a factor. Never a seed.
type MFAList struct {
	Enrollments []MFAEnrollment `json:"enrollments"`
}

// MFAEnrollment is one principal's factor: State "active" or "pending"
// (self-enrolled, not confirmed yet: Enrollment is its id).
type MFAEnrollment struct {
	Principal  string `json:"principal"`
	State      string `json:"state"`
	Enrollment string `json:"enrollment,omitempty"`
}

// --- transactions: POST /v1/transactions/{encrypt,decrypt}[/batch] ---

// EncryptRequest seals a confidential transaction.
type EncryptRequest struct {
	TransactionID string          `json:"transaction_id"`
	JobID         string          `json:"job_id"`
	PublicData    json.RawMessage `json:"public_data"`
	Confidential  json.RawMessage `json:"confidential"`
	Participants  []string        `json:"participants"`
	// Compress asks for field values of at least envelope.CompressThreshold
	// bytes to be DEFLATE-compressed before sealing (docs/envelope.md: the
	// sealed size then depends on the content).
	Compress bool `json:"compress,omitempty"`
}

// Recipient is a participant an envelope was sealed for, and its key version.
type Recipient struct {
	ID         string `json:"id"`
	KeyVersion uint32 `json:"key_version"`
}

// Encrypted answers EncryptRequest.
type Encrypted struct {
	TransactionID    string      `json:"transaction_id"`
	Envelope         string      `json:"envelope"`
	Algorithm        string      `json:"algorithm"`
	Recipients       []Recipient `json:"recipients"`
	EscrowKeyVersion uint32      `json:"escrow_key_version"`
	SealedBy         string      `json:"sealed_by"` // the principal that sealed it, bound in the signed header (v2)
}

// DecryptRequest opens an envelope as a participant, for a purpose.
type DecryptRequest struct {
	Envelope string   `json:"envelope"`
	As       string   `json:"as"`
	Purpose  string   `json:"purpose"`
	Fields   []string `json:"fields,omitempty"`
	// TransactionID, when given, must be the envelope's: it catches an
	// envelope stored under the wrong transaction.
	TransactionID string `json:"transaction_id,omitempty"`
}

// Decrypted answers DecryptRequest with the fields the purpose may see.
type Decrypted struct {
	TransactionID string                     `json:"transaction_id"`
	JobID         string                     `json:"job_id"`
	Confidential  map[string]json.RawMessage `json:"confidential"`
	SealedBy      string                     `json:"sealed_by,omitempty"` // envelope v2: the principal that sealed it; absent for v1
}

// Batch is the body of every batch call.
type Batch[T any] struct {
	Items []T `json:"items"`
}

// BatchResult is one item's answer: Result or Error.
type BatchResult[T any] struct {
	Result *T     `json:"result,omitempty"`
	Error  *Error `json:"error,omitempty"`
}

// BatchResults answers a Batch, in the order of its items.
type BatchResults[T any] struct {
	Results []BatchResult[T] `json:"results"`
}

// --- audit: POST /v1/audit/decrypt[/batch] ---

// AuditDecryptRequest opens an envelope through its escrow stanza under a
// court order.
type AuditDecryptRequest struct {
	Envelope      string `json:"envelope"`
	Authorization string `json:"authorization"` // the court order's id
	Purpose       string `json:"purpose"`       // must be the order's
}

// Order is the court order an audit decrypt used, and the use it consumed.
type Order struct {
	ID             string `json:"id"`
	Version        int    `json:"version"`
	DocumentSHA256 string `json:"document_sha256"`
	Use            int    `json:"use"`
	MaxUses        int    `json:"max_uses"`
}

// AuditDecrypted answers AuditDecryptRequest.
type AuditDecrypted struct {
	TransactionID string                     `json:"transaction_id"`
	JobID         string                     `json:"job_id"`
	Confidential  map[string]json.RawMessage `json:"confidential"`
	Order         Order                      `json:"order"`
	SealedBy      string                     `json:"sealed_by,omitempty"` // envelope v2: the principal that sealed it; absent for v1
}

// --- rewrap: POST /v1/envelopes/rewrap (Batch[RewrapItem]) and /stream ---

// RewrapItem is one envelope to rewrap (its text form); Ref is the
// caller's and echoed back untouched. The streaming route takes one per
// line.
type RewrapItem struct {
	Envelope string `json:"envelope"`
	Ref      string `json:"ref,omitempty"`
}

// Moved says which stanza moved from which version to which.
type Moved struct {
	Participant string `json:"participant,omitempty"` // "" for the escrow stanza
	Escrow      bool   `json:"escrow,omitempty"`
	From        uint32 `json:"from_version"`
	To          uint32 `json:"to_version"`
}

// Rewrapped is one rewrapped envelope (the input itself, Changed false,
// when it was already current).
type Rewrapped struct {
	Ref      string  `json:"ref,omitempty"`
	Envelope string  `json:"envelope"`
	Changed  bool    `json:"changed"`
	Moved    []Moved `json:"moved,omitempty"`
}

// RewrapResults answers POST /v1/envelopes/rewrap: the items' results
// and, when the daemon has timed live requests, how they fared (Live).
type RewrapResults struct {
	Results []BatchResult[Rewrapped] `json:"results"`
	Live    *LiveLatency             `json:"live,omitempty"`
}

// LiveLatency is how long the daemon's live single-envelope requests
// (encrypt, decrypt, audit decrypt) took: Samples of them ended in the
// last 4 s, with that p99, and IdleP99MS is the p99 of the last 1,024
// that ran with no rewrap call in progress or ended within 5 s (0 until
// there are 50 of those). A bulk client slows down when P99MS grows past a multiple of
// IdleP99MS (custodyctl rewrap --postgres --live-slowdown).
type LiveLatency struct {
	Samples   int     `json:"samples"`
	P99MS     float64 `json:"p99_ms"`
	IdleP99MS float64 `json:"idle_p99_ms"`
}

// RewrapLine is one line of the streaming rewrap's answer: for input line
// Line, the rewrapped envelope (Envelope, Changed set) or Error (Ref kept
// when the input had one). A line whose Line is past the input's last is
// the whole request's error (e.g. body_too_large).
type RewrapLine struct {
	Line     int64   `json:"line"` // 1-based line number of the input
	Ref      string  `json:"ref,omitempty"`
	Envelope string  `json:"envelope,omitempty"`
	Changed  *bool   `json:"changed,omitempty"`
	Moved    []Moved `json:"moved,omitempty"`
	Error    *Error  `json:"error,omitempty"`
}

// --- inspect: POST /v1/envelopes/inspect ---

// InspectRequest asks what an envelope's header says; no key is used.
type InspectRequest struct {
	Envelope string `json:"envelope"`
}

// InspectRecipient is a participant stanza of an inspected envelope.
type InspectRecipient struct {
	ID         string `json:"id"`
	KeyVersion uint32 `json:"key_version"`
	Algorithm  string `json:"algorithm"`
}

// InspectField is a v2 field's name and sealed size.
type InspectField struct {
	Name string `json:"name"`
	Size int    `json:"size"` // bytes of the sealed value: ciphertext minus the encoding byte and the GCM tag (compressed size if compressed)
}

// Inspected describes an envelope from its header alone.
type Inspected struct {
	Version          int                `json:"version"`
	TransactionID    string             `json:"transaction_id"`
	JobID            string             `json:"job_id"`
	CreatedAt        time.Time          `json:"created_at"`
	SealedBy         string             `json:"sealed_by,omitempty"` // v2 only
	SigningKeyID     string             `json:"signing_key_id"`
	SignatureValid   bool               `json:"signature_valid"`
	SignatureError   string             `json:"signature_error,omitempty"` // why not, when not
	Participants     []InspectRecipient `json:"participants"`
	EscrowKeyVersion uint32             `json:"escrow_key_version"`
	PublicData       json.RawMessage    `json:"public_data"`
	Fields           []InspectField     `json:"fields,omitempty"`       // v2: names and sizes
	PayloadSize      int                `json:"payload_size,omitempty"` // v1: one payload, field names unknown
}

// --- keys: GET /v1/keys, POST /v1/keys/{id}/{rotate,retire,prove} ---

// Keys lists every key the daemon manages.
type Keys struct {
	RotateAfter string `json:"rotate_after"`
	Keys        []Key  `json:"keys"`
}

// Key is one participant's key, or the escrow key (Kind "escrow").
type Key struct {
	Kind        string           `json:"kind"`
	ID          string           `json:"id,omitempty"`
	Active      uint32           `json:"active_version"`
	DueAt       time.Time        `json:"due_at,omitzero"`
	Due         bool             `json:"due"`
	NeedsRewrap bool             `json:"needs_rewrap"`
	Versions    []KeyVersionInfo `json:"versions"`
}

// KeyVersionInfo is one version of a Key and its lifecycle.
type KeyVersionInfo struct {
	Version     uint32    `json:"key_version"`
	State       string    `json:"state"` // active, decrypt-only, destroyed
	Algorithm   string    `json:"algorithm,omitempty"`
	SHA256      string    `json:"sha256,omitempty"`
	Created     time.Time `json:"created,omitzero"`
	AgeDays     int       `json:"age_days"`
	RotateAfter time.Time `json:"rotate_after,omitzero"`
	Destroyed   time.Time `json:"destroyed,omitzero"`
}

// RetireRequest destroys a key version; the operator attests that every
// envelope was rewrapped and gives the last rewrap run's count.
type RetireRequest struct {
	Version          uint32 `json:"version"`
	ConfirmRewrapped bool   `json:"confirm_rewrapped"`
	RewrappedCount   *int64 `json:"rewrapped_count"`
}

// ProveRequest asks for a proof of possession (package pop).
type ProveRequest struct {
	Version         uint32 `json:"version,omitempty"` // 0 = active
	EphemeralPublic string `json:"ephemeral_public"`  // base64
	Nonce           string `json:"nonce"`             // base64, 16..64 bytes
}

// Proof answers ProveRequest.
type Proof struct {
	ID        string `json:"id"`
	Version   uint32 `json:"key_version"`
	Algorithm string `json:"algorithm"`
	PublicKey string `json:"public_key"` // base64
	MAC       string `json:"mac"`        // base64, 16 bytes
}

// --- ceremonies: /v1/ceremony… (docs/ceremonies.md) ---

// CeremonyRequestInput opens a ceremony request.
type CeremonyRequestInput struct {
	Kind     string            `json:"kind"`
	Params   map[string]string `json:"params"` // backup: key_label; retire: version, rewrapped_count
	M        int               `json:"m"`
	N        int               `json:"n"`        // backup: shares to make (the first N officers of the file); 0 = every officer
	Window   string            `json:"window"`   // Go duration; "" = 1h
	Manifest string            `json:"manifest"` // restore: the backup manifest (its JSON text)
}

// CeremonyRequest is a pending request: the text officers approve and
// who did.
type CeremonyRequest struct {
	ID        string            `json:"id"`
	Kind      string            `json:"kind"`
	Params    map[string]string `json:"params"`
	Requester string            `json:"requester"`
	Quorum    int               `json:"m"`
	NotBefore time.Time         `json:"not_before"`
	NotAfter  time.Time         `json:"not_after"`
	Nonce     string            `json:"nonce"`
	Hash      string            `json:"hash"` // SHA-256 of Canonical: what officers approve
	Canonical string            `json:"canonical"`
	Approvals []string          `json:"approvals"`
	Shares    int               `json:"shares,omitempty"` // backup: SO PIN shares, restore: KEK shares submitted
	ShareKind string            `json:"share_kind,omitempty"`
	Needed    int               `json:"shares_needed,omitempty"`
}

// CeremonyStatus is GET /v1/ceremony.
type CeremonyStatus struct {
	Officer        string            `json:"officer"`
	Genesis        bool              `json:"genesis"`
	SOPIN          *SOPINShares      `json:"so_pin,omitempty"` // nil: not split, backups refused
	EscrowVersions []EscrowVersion   `json:"escrow_versions"`
	Pending        []CeremonyRequest `json:"pending"`
}

// SOPINShares is the public record of the token's SO PIN shares.
type SOPINShares struct {
	Set       string   `json:"set"`
	Threshold int      `json:"threshold"`
	Holders   []string `json:"holders"`
}

// EscrowVersion is one escrow key version.
type EscrowVersion struct {
	Label       string `json:"label"`
	Version     uint32 `json:"version"`
	State       string `json:"state"` // active, decrypt-only, destroyed
	Fingerprint string `json:"sha256"`
	Created     string `json:"created,omitempty"` // date
}

// Approval approves a request: the hash the officer read, and the
// request's nonce.
type Approval struct {
	Hash  string `json:"hash"`
	Nonce string `json:"nonce"`
}

// ShareInput submits one decrypted share (custody-share v1 or
// custody-so-pin-share v1). It is secret.
type ShareInput struct {
	Share string `json:"share"`
}

// ShareAccepted answers ShareInput: how many shares of Threshold are in.
type ShareAccepted struct {
	Request   string `json:"request"`
	Shares    int    `json:"shares"`
	Threshold int    `json:"threshold"`
	Kind      string `json:"kind"`
}

// Execute runs an approved request (POST /v1/ceremony/{kind}).
type Execute struct {
	Request string `json:"request"`
}

// Executed answers Execute.
type Executed struct {
	Request      string        `json:"request"`
	Kind         string        `json:"kind"`
	Fingerprints []Fingerprint `json:"fingerprints,omitempty"`
	Outputs      []OutputFile  `json:"outputs,omitempty"`
	KCV          string        `json:"kcv,omitempty"`
	BackupID     string        `json:"backup_id,omitempty"`
	Transcript   OutputFile    `json:"transcript"`
}

// Fingerprint is a key's public-key SHA-256, in hex and in words.
type Fingerprint struct {
	Label   string `json:"label"`
	SHA256  string `json:"sha256"`
	Words   string `json:"words"`
	Created bool   `json:"created,omitempty"`
}

// OutputFile is one file a ceremony wrote.
type OutputFile struct {
	Name   string `json:"name"`             // what the fetch route takes
	Path   string `json:"path"`             // on the daemon's host, readable by its user only
	SHA256 string `json:"sha256"`           //
	Holder string `json:"holder,omitempty"` // the only officer who may fetch it (a share file)
}

// Output is one output file's content, for the officer allowed to have it.
type Output struct {
	Request string `json:"request"`
	Name    string `json:"name"`
	SHA256  string `json:"sha256"`
	Data    []byte `json:"data"` // the file's bytes (base64 in JSON)
}

// --- access log: GET /v1/log/… ---

// Checkpoint is the latest signed checkpoint.
type Checkpoint struct {
	Origin     string    `json:"origin"`
	Size       int64     `json:"size"`
	Root       tlog.Hash `json:"root"`
	Checkpoint string    `json:"checkpoint"` // the signed note, verbatim
}

// LogEntry is one entry as it is stored, with its leaf hash.
type LogEntry struct {
	Index    int64           `json:"index"`
	LeafHash tlog.Hash       `json:"leaf_hash"`
	Entry    json.RawMessage `json:"entry"`
}

// LogEntries answers GET /v1/log/entries?start=&end= (end exclusive).
type LogEntries struct {
	Start   int64      `json:"start"`
	End     int64      `json:"end"`
	Entries []LogEntry `json:"entries"`
}

// The proof routes (/v1/log/proof/inclusion, /consistency) answer
// auditlog.InclusionProof and auditlog.ConsistencyProof, which carry their
// own Check.
