package auditlog

import "testing"

// TestGatherLiveFirst: a group commit takes every live entry waiting and
// at most maxBackgroundBatch of bulk work's, whatever the backlog, and the
// queues drain to the last entry after they are closed.
func TestGatherLiveFirst(t *testing.T) {
	reqs, bg := make(chan *request, maxBatch), make(chan *request, maxBatch)
	live := map[*request]bool{}
	for range 1000 {
		bg <- &request{}
	}
	for range 10 {
		r := &request{}
		live[r] = true
		reqs <- r
	}
	batch := gather(nil, &reqs, &bg)
	nLive := 0
	for _, r := range batch {
		if live[r] {
			nLive++
		}
	}
	if nLive != 10 {
		t.Errorf("batch has %d of the 10 live entries", nLive)
	}
	if got, max := len(batch)-nLive, maxBackgroundBatch+1; got > max {
		t.Errorf("batch has %d background entries, want at most %d", got, max)
	}
	close(reqs)
	close(bg)
	total := len(batch)
	for {
		b := gather(nil, &reqs, &bg)
		if len(b) == 0 {
			break
		}
		if len(b) > maxBackgroundBatch+1 {
			t.Fatalf("a background-only batch of %d entries", len(b))
		}
		total += len(b)
	}
	if total != 1010 || reqs != nil || bg != nil {
		t.Errorf("drained %d of 1010 entries; queues nil: %v %v", total, reqs == nil, bg == nil)
	}
}
