package common

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
)

// TestCredentialsToProvider checks every key set the Go clip's CredentialsToProvider
// recognises: the provider type and name it returns and what GetCredentials gives
// for the registry it was made for (and for another one).
func TestCredentialsToProvider(t *testing.T) {
	ctx := context.Background()
	type want struct {
		kind, name string
		user, pass string // "" + "" = ErrNoCredentials
	}
	cases := []struct {
		label    string
		registry string
		creds    map[string]string
		want     want
	}{
		{"nil map", "reg.example.com", nil, want{kind: "public", name: "public-only"}},
		{"empty map", "reg.example.com", map[string]string{}, want{kind: "public", name: "public-only"}},
		{"USERNAME/PASSWORD", "reg.example.com:5000", map[string]string{"USERNAME": "u", "PASSWORD": "p"},
			want{"static", "creds-reg.example.com:5000", "u", "p"}},
		{"REGISTRY_ before plain", "reg.example.com", map[string]string{"USERNAME": "u", "PASSWORD": "p", "REGISTRY_USERNAME": "ru", "REGISTRY_PASSWORD": "rp"},
			want{"static", "creds-reg.example.com", "ru", "rp"}},
		{"DOCKER_ keys", "reg.example.com", map[string]string{"DOCKER_USERNAME": "du", "DOCKER_PASSWORD": "dp"},
			want{"static", "creds-reg.example.com", "du", "dp"}},
		{"any key containing USERNAME", "reg.example.com", map[string]string{"my_username": "mu", "MY_PASSWORD": "mp"},
			want{"static", "creds-reg.example.com", "mu", "mp"}},
		{"basic with an empty password", "reg.example.com", map[string]string{"USERNAME": "u", "PASSWORD": ""},
			want{kind: "public", name: "public-only"}},
		{"only USERNAME", "reg.example.com", map[string]string{"USERNAME": "u"}, want{kind: "public", name: "public-only"}},
		{"basic on an ECR host stays basic", "1.dkr.ecr.us-east-1.amazonaws.com", map[string]string{"USERNAME": "AWS", "PASSWORD": "tok"},
			want{"static", "creds-1.dkr.ecr.us-east-1.amazonaws.com", "AWS", "tok"}},
		{"AWS without region", "1.dkr.ecr.us-east-1.amazonaws.com", map[string]string{"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "s"},
			want{kind: "public", name: "public-only"}},
		{"AWS keys", "1.dkr.ecr.us-east-1.amazonaws.com", map[string]string{"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "s", "AWS_REGION": "us-east-1"},
			want{kind: "ecr", name: "ecr[us-east-1]"}},
		{"GCP access token", "us-docker.pkg.dev", map[string]string{"GCP_ACCESS_TOKEN": "gt"},
			want{"static", "creds-us-docker.pkg.dev", "oauth2accesstoken", "gt"}},
		{"GCP key file", "gcr.io", map[string]string{"GOOGLE_APPLICATION_CREDENTIALS": "/k.json"},
			want{kind: "callback", name: "creds-gcr.io"}},
		{"Azure", "x.azurecr.io", map[string]string{"AZURE_CLIENT_ID": "c", "AZURE_CLIENT_SECRET": "s"},
			want{kind: "callback", name: "creds-x.azurecr.io"}},
		{"NGC on nvcr.io", "nvcr.io", map[string]string{"NGC_API_KEY": "k"},
			want{"static", "creds-nvcr.io", "$oauthtoken", "k"}},
		{"GHCR token alone", "ghcr.io", map[string]string{"GITHUB_TOKEN": "gh"},
			want{"static", "creds-ghcr.io", "gh", "gh"}},
		{"GHCR token + GITHUB_USERNAME", "ghcr.io", map[string]string{"GITHUB_TOKEN": "gh", "GITHUB_USERNAME": "me", "USERNAME": "other"},
			want{"static", "creds-ghcr.io", "me", "gh"}},
		{"GHCR token + USERNAME", "ghcr.io", map[string]string{"GITHUB_TOKEN": "gh", "USERNAME": "other"},
			want{"static", "creds-ghcr.io", "other", "gh"}},
		{"Docker Hub user/pass + token", "docker.io", map[string]string{"DOCKERHUB_TOKEN": "t", "DOCKERHUB_USERNAME": "du", "DOCKERHUB_PASSWORD": "dp"},
			want{"static", "creds-docker.io", "du", "dp"}},
		{"Docker Hub token + USERNAME", "registry-1.docker.io", map[string]string{"DOCKERHUB_TOKEN": "t", "USERNAME": "u"},
			want{"static", "creds-registry-1.docker.io", "u", "t"}},
		{"GITHUB_TOKEN elsewhere", "reg.example.com", map[string]string{"GITHUB_TOKEN": "gh"},
			want{"static", "creds-reg.example.com", "oauth2accesstoken", "gh"}},
		{"NGC_API_KEY elsewhere", "reg.example.com", map[string]string{"NGC_API_KEY": "k"},
			want{"static", "creds-reg.example.com", "$oauthtoken", "k"}},
		{"DOCKERHUB_TOKEN elsewhere", "reg.example.com", map[string]string{"DOCKERHUB_TOKEN": "t"},
			want{"static", "creds-reg.example.com", "oauth2accesstoken", "t"}},
		{"empty token", "reg.example.com", map[string]string{"GITHUB_TOKEN": ""}, want{kind: "public", name: "public-only"}},
		{"unknown keys", "reg.example.com", map[string]string{"SOMETHING": "x"}, want{kind: "public", name: "public-only"}},
		{"unknown keys on an ECR host", "1.dkr.ecr.eu-west-1.amazonaws.com", map[string]string{"SOMETHING": "x"},
			want{kind: "public", name: "public-only"}},
	}
	for _, c := range cases {
		t.Run(c.label, func(t *testing.T) {
			p := CredentialsToProvider(ctx, c.registry, c.creds)
			kind := ""
			switch p.(type) {
			case *PublicOnlyProvider:
				kind = "public"
			case *StaticProvider:
				kind = "static"
			case *ECRProvider:
				kind = "ecr"
			case *CallbackProvider:
				kind = "callback"
			}
			if kind != c.want.kind || p.Name() != c.want.name {
				t.Fatalf("got %T %q, want %s %q", p, p.Name(), c.want.kind, c.want.name)
			}
			if kind == "ecr" || kind == "callback" {
				return // below
			}
			cfg, err := p.GetCredentials(ctx, c.registry, "team/app")
			if c.want.user == "" && c.want.pass == "" {
				if cfg != nil || err != ErrNoCredentials {
					t.Fatalf("GetCredentials = %v, %v; want nil, ErrNoCredentials", cfg, err)
				}
				return
			}
			if err != nil || cfg.Username != c.want.user || cfg.Password != c.want.pass {
				t.Fatalf("GetCredentials = %+v, %v; want %s/%s", cfg, err, c.want.user, c.want.pass)
			}
			// As beta9 uses it (cache_reconciler.go:2021).
			got, err := authn.FromConfig(*cfg).Authorization()
			if err != nil || got.Username != c.want.user || got.Password != c.want.pass {
				t.Fatalf("authn.FromConfig: %+v, %v", got, err)
			}
			// Only the registry it was made for.
			if cfg, err := p.GetCredentials(ctx, "other.example.com", ""); cfg != nil || err != ErrNoCredentials {
				t.Fatalf("other registry: %v, %v", cfg, err)
			}
		})
	}
}

func TestCredentialsToProviderKeychainCallback(t *testing.T) {
	t.Setenv("DOCKER_CONFIG", t.TempDir()) // an empty docker config: nothing found
	t.Setenv("REGISTRY_AUTH_FILE", "")
	p := CredentialsToProvider(context.Background(), "gcr.io", map[string]string{"GCP_PROJECT_ID": "p"})
	if cfg, err := p.GetCredentials(context.Background(), "gcr.io", "p/img"); cfg != nil || err != ErrNoCredentials {
		t.Fatalf("gcr.io: %v, %v", cfg, err)
	}
	if cfg, err := p.GetCredentials(context.Background(), "ghcr.io", ""); cfg != nil || err != ErrNoCredentials {
		t.Fatalf("ghcr.io: %v, %v", cfg, err)
	}
}

func TestDetectCredentialType(t *testing.T) {
	for _, c := range []struct {
		registry string
		creds    map[string]string
		want     CredentialType
	}{
		{"r", nil, CredTypePublic},
		{"r", map[string]string{"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}, CredTypeAWS},
		{"r", map[string]string{"AWS_ACCESS_KEY_ID": "a", "GCP_PROJECT_ID": "p"}, CredTypeGCP},
		{"r", map[string]string{"AZURE_CLIENT_ID": "a", "AZURE_CLIENT_SECRET": "s", "USERNAME": "u", "PASSWORD": "p"}, CredTypeAzure},
		{"r", map[string]string{"GITHUB_TOKEN": "t", "USERNAME": "u", "PASSWORD": "p"}, CredTypeToken},
		{"r", map[string]string{"x_Username": "u", "y_password": "p"}, CredTypeBasic},
		{"X.DKR.ECR.us-east-1.amazonaws.com", map[string]string{"k": "v"}, CredTypeAWS},
		{"gcr.io", map[string]string{"k": "v"}, CredTypeGCP},
		{"europe-docker.pkg.dev", map[string]string{"k": "v"}, CredTypeGCP},
		// "azurecr" contains "ecr": the Go clip's host check says aws (kept as is).
		{"a.azurecr.io", map[string]string{"k": "v"}, CredTypeAWS},
		{"azure.example", map[string]string{"k": "v"}, CredTypeUnknown},
		{"r", map[string]string{"k": "v"}, CredTypeUnknown},
	} {
		if got := DetectCredentialType(c.registry, c.creds); got != c.want {
			t.Errorf("DetectCredentialType(%q, %v) = %s, want %s", c.registry, c.creds, got, c.want)
		}
	}
}

func TestMatchRegistryPattern(t *testing.T) {
	for _, c := range []struct {
		pattern, registry string
		want              bool
	}{
		{"*", "anything", true},
		{"reg.io", "reg.io", true},
		{"reg.io", "reg.io:5000", false},
		{"*.dkr.ecr.*.amazonaws.com", "123.dkr.ecr.us-east-1.amazonaws.com", true},
		{"*.dkr.ecr.*.amazonaws.com", "123.dkr.ecr.us-east-1.amazonaws.com.evil", false},
		{"*.dkr.ecr.*.amazonaws.com", "ghcr.io", false},
		{"a*a", "a", false},
	} {
		if got := matchRegistryPattern(c.pattern, c.registry); got != c.want {
			t.Errorf("matchRegistryPattern(%q, %q) = %v", c.pattern, c.registry, got)
		}
	}
}

// The signatures the AWS SDK (aws-sdk-go-v2 v1.25.2, signer/v4) computes for the same
// request, key and time.
func TestSignV4MatchesSDK(t *testing.T) {
	now := time.Date(2024, 3, 4, 5, 6, 7, 0, time.UTC)
	for tok, want := range map[string]string{
		"":             "SignedHeaders=content-length;content-type;host;x-amz-date;x-amz-target, Signature=2e977b2dad4dbfda8dbff4d0d87175386ad0a705ca65420fa17b5d4c7a5157ac",
		"SESSIONTOKEN": "SignedHeaders=content-length;content-type;host;x-amz-date;x-amz-security-token;x-amz-target, Signature=5584f541067922adc4efea0d8d5087e12702a0600f91f0982d9d3b93348f8a38",
	} {
		body := []byte("{}")
		r, _ := http.NewRequest("POST", "https://api.ecr.us-east-1.amazonaws.com/", bytes.NewReader(body))
		r.Header.Set("Content-Type", "application/x-amz-json-1.1")
		r.Header.Set("X-Amz-Target", "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken")
		signV4(r, body, "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", tok, "us-east-1", "ecr", now)
		got := r.Header.Get("Authorization")
		if got != "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240304/us-east-1/ecr/aws4_request, "+want {
			t.Errorf("token %q: %s", tok, got)
		}
	}
}

// The ECR provider from CredentialsToProvider against a fake ECR API.
func TestCredentialsToProviderECR(t *testing.T) {
	var calls atomic.Int32
	fail := false
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		body, _ := io.ReadAll(r.Body)
		if r.Method != "POST" || string(body) != "{}" ||
			r.Header.Get("X-Amz-Target") != "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken" ||
			r.Header.Get("Content-Type") != "application/x-amz-json-1.1" ||
			r.Header.Get("X-Amz-Security-Token") != "st" ||
			!strings.HasPrefix(r.Header.Get("Authorization"), "AWS4-HMAC-SHA256 Credential=AKID/") ||
			!strings.Contains(r.Header.Get("Authorization"), "/eu-west-1/ecr/aws4_request") {
			t.Errorf("unexpected request %s %q %v", r.Method, body, r.Header)
		}
		if fail {
			w.WriteHeader(400)
			io.WriteString(w, `{"__type":"UnrecognizedClientException","message":"bad key"}`)
			return
		}
		tok := base64.StdEncoding.EncodeToString([]byte("AWS:secret-token"))
		io.WriteString(w, `{"authorizationData":[{"authorizationToken":"`+tok+`","expiresAt":1.7e9,"proxyEndpoint":"https://1.dkr.ecr.eu-west-1.amazonaws.com"}]}`)
	}))
	defer srv.Close()

	const reg = "1.dkr.ecr.eu-west-1.amazonaws.com"
	p := CredentialsToProvider(context.Background(), reg, map[string]string{
		"AWS_ACCESS_KEY_ID": "AKID", "AWS_SECRET_ACCESS_KEY": "secret", "AWS_SESSION_TOKEN": "st", "AWS_REGION": "eu-west-1",
	})
	ecr, ok := p.(*ECRProvider)
	if !ok {
		t.Fatalf("%T", p)
	}
	ecr.endpoint = srv.URL
	for i := 0; i < 2; i++ {
		cfg, err := p.GetCredentials(context.Background(), reg, "team/app")
		if err != nil || cfg.Username != "AWS" || cfg.Password != "secret-token" {
			t.Fatalf("GetCredentials = %+v, %v", cfg, err)
		}
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("%d token requests, want 1 (cached)", n)
	}
	if cfg, err := p.GetCredentials(context.Background(), "2.dkr.ecr.eu-west-1.amazonaws.com", ""); cfg != nil || err != ErrNoCredentials {
		t.Fatalf("other registry: %v, %v", cfg, err)
	}

	// A refused exchange is an error (not ErrNoCredentials): clip falls back to its chain.
	fail = true
	ecr.cached = nil
	cfg, err := p.GetCredentials(context.Background(), reg, "")
	if cfg != nil || err == nil || errors.Is(err, ErrNoCredentials) || !strings.Contains(err.Error(), "bad key") {
		t.Fatalf("refused: %v, %v", cfg, err)
	}
	t.Setenv("AWS_ENDPOINT_URL_ECR", "")
	t.Setenv("AWS_ENDPOINT_URL", "")
	if got := (&ECRProvider{region: "cn-north-1"}).apiEndpoint(); got != "https://api.ecr.cn-north-1.amazonaws.com.cn" {
		t.Fatalf("cn endpoint %s", got)
	}
	if got := (&ECRProvider{region: "us-east-1"}).apiEndpoint(); got != "https://api.ecr.us-east-1.amazonaws.com" {
		t.Fatalf("endpoint %s", got)
	}
	t.Setenv("AWS_ENDPOINT_URL", "http://localhost:4566")
	if got := (&ECRProvider{region: "us-east-1"}).apiEndpoint(); got != "http://localhost:4566" {
		t.Fatalf("AWS_ENDPOINT_URL: %s", got)
	}
}
