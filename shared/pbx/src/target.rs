//! Which PBX a tenant's calls go to: its own (`pbx` in the tenant file), else
//! the one from the environment (`PBX_API_URL`, `PBX_API_TOKEN`).

use crate::PbxClient;

/// The PBX from the environment; either part may be missing.
#[derive(Debug, Clone, Default)]
pub struct PbxTarget {
    pub api_url: Option<String>,
    pub api_token: Option<String>,
}

impl PbxTarget {
    /// `PBX_API_URL` and `PBX_API_TOKEN`, when set and not empty.
    pub fn from_env() -> PbxTarget {
        let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
        PbxTarget {
            api_url: var("PBX_API_URL"),
            api_token: var("PBX_API_TOKEN"),
        }
    }

    /// A client for the tenant's own PBX (`own`: its URL and token), else this one;
    /// `service` names the binary whose environment lacks a setting.
    pub fn client(
        &self,
        http: &reqwest::Client,
        own: Option<(&str, &str)>,
        service: &str,
    ) -> Result<PbxClient, String> {
        let (url, token) = match own {
            Some((url, token)) => (Some(url.to_owned()), Some(token.to_owned())),
            None => (self.api_url.clone(), self.api_token.clone()),
        };
        let url = url.ok_or_else(|| {
            format!("no PBX API URL: set PBX_API_URL for the {service}, or the tenant's pbx.api_url")
        })?;
        let token = token.ok_or_else(|| {
            format!("no PBX API token: set PBX_API_TOKEN for the {service}, or the tenant's pbx.api_token")
        })?;
        Ok(PbxClient::with_http(http.clone(), &url, &token))
    }
}
