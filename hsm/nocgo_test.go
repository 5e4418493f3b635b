package hsm

import (
	"go/ast"
	"go/parser"
	"go/token"
	"reflect"
	"slices"
	"testing"
)

// TestNoCgoStubComplete checks that nocgo.go, the build without cgo,
// declares every exported method of this build's *Token, so that code
// written against the real Token keeps compiling with CGO_ENABLED=0 (make
// lint builds ./... so, which also checks the signatures in use).
func TestNoCgoStubComplete(t *testing.T) {
	f, err := parser.ParseFile(token.NewFileSet(), "nocgo.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var stub, funcs []string
	for _, d := range f.Decls {
		fd, ok := d.(*ast.FuncDecl)
		if !ok || !fd.Name.IsExported() {
			continue
		}
		if fd.Recv == nil {
			funcs = append(funcs, fd.Name.Name)
		} else {
			stub = append(stub, fd.Name.Name)
		}
	}
	tt := reflect.TypeFor[*Token]()
	for i := range tt.NumMethod() {
		if m := tt.Method(i).Name; !slices.Contains(stub, m) {
			t.Errorf("nocgo.go lacks (*Token).%s", m)
		}
	}
	if len(stub) != tt.NumMethod() {
		t.Errorf("nocgo.go declares %d Token methods, the cgo build %d", len(stub), tt.NumMethod())
	}
	for _, fn := range []string{"Open", "InitToken"} {
		if !slices.Contains(funcs, fn) {
			t.Errorf("nocgo.go lacks func %s", fn)
		}
	}
}
