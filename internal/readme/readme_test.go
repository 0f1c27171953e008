package readme

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRewrite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "performance.md")
	os.WriteFile(path, []byte("a, between `<!-- x:begin -->` and `<!-- x:end -->`:\n<!-- x:begin -->\nold\n<!-- x:end -->\nb\n"), 0o644)
	if err := Check(path, "x"); err != nil {
		t.Fatal(err)
	}
	if err := Rewrite(path, "x", "new\n"); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(path)
	if want := "a, between `<!-- x:begin -->` and `<!-- x:end -->`:\n<!-- x:begin -->\nnew\n<!-- x:end -->\nb\n"; string(got) != want {
		t.Fatalf("got %q, want %q", got, want)
	}
}

// TestMarkersMissing: a file without the section, or with it malformed,
// is refused by Check and left as it was by Rewrite.
func TestMarkersMissing(t *testing.T) {
	for _, tc := range []struct{ name, text, want string }{
		{"none", "a\nb\n", "no generated x section"},
		{"other section", "<!-- y:begin -->\n<!-- y:end -->\n", "no generated x section"},
		{"begin only", "<!-- x:begin -->\n", "want one of each"},
		{"twice", "<!-- x:begin -->\n<!-- x:end -->\n<!-- x:begin -->\n<!-- x:end -->\n", "want one of each"},
		{"reversed", "<!-- x:end -->\n<!-- x:begin -->\n", "before"},
		{"quoted only", "between `<!-- x:begin -->` and `<!-- x:end -->`\n", "no generated x section"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "doc.md")
			os.WriteFile(path, []byte(tc.text), 0o644)
			if err := Check(path, "x"); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Check: got %v, want an error containing %q", err, tc.want)
			}
			if err := Rewrite(path, "x", "z\n"); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Rewrite: got %v, want an error containing %q", err, tc.want)
			}
			if got, _ := os.ReadFile(path); string(got) != tc.text {
				t.Fatalf("the file changed to %q", got)
			}
		})
	}
	if err := Check(filepath.Join(t.TempDir(), "absent.md"), "x"); !os.IsNotExist(err) {
		t.Fatalf("Check of a missing file: got %v", err)
	}
}
