package ceremony

import "slices"

// Pending returns the ids of the requests still open (not executed, window
// not closed), oldest first.
func (a *Approvals) Pending() []string {
	now := a.now()
	a.mu.Lock()
	defer a.mu.Unlock()
	type item struct {
		id string
		nb int64
	}
	var items []item
	for id, p := range a.reqs {
		if !p.used && !now.After(p.req.NotAfter) {
			items = append(items, item{id, p.req.NotBefore.UnixNano()})
		}
	}
	slices.SortFunc(items, func(x, y item) int {
		if x.nb != y.nb {
			return int(x.nb - y.nb)
		}
		if x.id < y.id {
			return -1
		}
		return 1
	})
	out := make([]string, len(items))
	for i, it := range items {
		out[i] = it.id
	}
	return out
}

// CancelPending drops every request not yet executed and returns their
// ids: their approvals were counted against officers who may no longer be.
func (a *Approvals) CancelPending() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var ids []string
	for id, p := range a.reqs {
		if !p.used {
			ids = append(ids, id)
			delete(a.reqs, id)
		}
	}
	slices.Sort(ids)
	return ids
}
