package auditlog_test

import (
	"encoding/hex"
	"testing"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// RFC 6962 known answers: the certificate-transparency test vectors (the
// 8 leaves of the reference implementation's merkle tree tests).
var ctLeaves = []string{"", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"}

var ctRoots = []string{
	"6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
	"fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
	"aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
	"d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
	"4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
	"76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
	"ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
	"5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
}

type hashes []tlog.Hash

func (h *hashes) ReadHashes(idx []int64) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(idx))
	for i, x := range idx {
		out[i] = (*h)[x]
	}
	return out, nil
}

func TestRFC6962Vectors(t *testing.T) {
	t.Parallel()
	// The empty tree's hash is SHA-256 of nothing.
	if got := hex.EncodeToString(tlogEmpty()); got != "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" {
		t.Fatalf("empty tree hash %s", got)
	}
	if got := tlog.RecordHash(nil); hex.EncodeToString(got[:]) != ctRoots[0] {
		t.Fatalf("leaf hash of the empty leaf %x", got)
	}
	var st hashes
	for i, l := range ctLeaves {
		data, _ := hex.DecodeString(l)
		hs, err := tlog.StoredHashes(int64(i), data, &st)
		if err != nil {
			t.Fatal(err)
		}
		st = append(st, hs...)
		root, err := tlog.TreeHash(int64(i+1), &st)
		if err != nil {
			t.Fatal(err)
		}
		if got := hex.EncodeToString(root[:]); got != ctRoots[i] {
			t.Errorf("root of size %d = %s, want %s", i+1, got, ctRoots[i])
		}
	}
	// Every inclusion and consistency proof over the 8-leaf tree checks.
	for size := int64(1); size <= 8; size++ {
		root, _ := tlog.TreeHash(size, &st)
		for i := int64(0); i < size; i++ {
			p, err := tlog.ProveRecord(size, i, &st)
			if err != nil {
				t.Fatal(err)
			}
			data, _ := hex.DecodeString(ctLeaves[i])
			if err := tlog.CheckRecord(p, size, root, i, tlog.RecordHash(data)); err != nil {
				t.Errorf("inclusion %d in %d: %v", i, size, err)
			}
		}
		for old := int64(1); old < size; old++ {
			oldRoot, _ := tlog.TreeHash(old, &st)
			p, err := tlog.ProveTree(size, old, &st)
			if err != nil {
				t.Fatal(err)
			}
			if err := tlog.CheckTree(p, size, root, old, oldRoot); err != nil {
				t.Errorf("consistency %d→%d: %v", old, size, err)
			}
		}
	}
}

func tlogEmpty() []byte {
	h, _ := tlog.TreeHash(0, &hashes{})
	return h[:]
}

// The signed-note vector of golang.org/x/mod/sumdb/note's documentation.
func TestSignedNoteVector(t *testing.T) {
	t.Parallel()
	const (
		skey = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
		vkey = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
		text = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
		want = text + "\n— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
	)
	s, err := note.NewSigner(skey)
	if err != nil {
		t.Fatal(err)
	}
	msg, err := note.Sign(&note.Note{Text: text}, s)
	if err != nil || string(msg) != want {
		t.Fatalf("Sign = %q, %v", msg, err)
	}
	v, err := note.NewVerifier(vkey)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := note.Open(msg, note.VerifierList(v)); err != nil {
		t.Fatal(err)
	}
}
