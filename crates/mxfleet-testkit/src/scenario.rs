//! One way to set up an end-to-end test: bots with fresh users, humans logged in, backends,
//! the fleet started and syncing.
//!
//! ```no_run
//! # async fn demo(llm: &mxfleet_testkit::FakeOpenAi) -> anyhow::Result<()> {
//! use mxfleet_testkit::Scenario;
//! let mut s = Scenario::new()
//!     .llm(llm)
//!     .bot(|b| b.llm().open_dms())
//!     .human()
//!     .start()
//!     .await?;
//! let dm = s.human().dm(s.bot("bot").id()).await?;
//! # s.fleet.stop().await?; Ok(()) }
//! ```
//!
//! Every bot gets a fresh random user (or the one it is given), every human too; the config is
//! written from the scenario (password accounts on the echo backend unless told otherwise), and
//! [`Running::reconfigure`] rewrites it from a changed scenario, for reloads and restarts.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context, Result};

use crate::{FakeOpenAi, FleetProcess, Human, Synapse, free_port};

/// How long a started fleet may take until every enabled bot is syncing.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The admin token of scenarios with an admin API.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// A test setup, built step by step.
#[derive(Debug, Clone, Default)]
pub struct Scenario {
    top: Vec<String>,
    backends: BTreeMap<String, String>,
    bots: Vec<BotSpec>,
    /// One per human: whether its client shares room keys only with verified devices.
    humans: Vec<bool>,
    admin: bool,
    env: Vec<(String, String)>,
}

/// One bot account of a scenario.
#[derive(Debug, Clone)]
pub struct BotSpec {
    id: String,
    user: Option<(String, String)>,
    homeserver: Option<String>,
    access_token: bool,
    backend: String,
    keys: Vec<String>,
    tables: Vec<(String, String)>,
    in_config: bool,
    wait: bool,
}

/// A bot's Matrix user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bot {
    /// Its user id.
    pub user_id: String,
    /// Its password.
    pub password: String,
}

/// A started (or prepared) scenario.
pub struct Running {
    /// The fleet process.
    pub fleet: FleetProcess,
    /// The humans, in the order they were asked for.
    pub humans: Vec<Human>,
    bots: BTreeMap<String, Bot>,
    tokens: BTreeMap<String, String>,
    admin: Option<String>,
    homeserver: String,
    scenario: Scenario,
}

impl Scenario {
    /// An empty scenario.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the backend `llm` (`kind = "openai"`, model `base-model`) on `llm`.
    pub fn llm(self, llm: &FakeOpenAi) -> Self {
        let body = format!(
            "kind = \"openai\"\nbase_url = {:?}\nmodel = \"base-model\"",
            llm.base_url
        );
        self.backend("llm", &body)
    }

    /// Adds the backend `name` with the TOML `body` of its table.
    pub fn backend(mut self, name: &str, body: &str) -> Self {
        self.backends.insert(name.to_owned(), body.to_owned());
        self
    }

    /// Adds top-level TOML (`[restart]`, `[shard]`, or a raw table); bare keys go in the first
    /// one, before any table.
    pub fn toml(mut self, text: &str) -> Self {
        self.top.push(text.to_owned());
        self
    }

    /// Turns the admin API on (a free loopback port, [`ADMIN_TOKEN`]).
    pub fn admin(mut self) -> Self {
        self.admin = true;
        self
    }

    /// Sets an environment variable of the fleet.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Adds the bot `bot`, set up by `setup`.
    pub fn bot(self, setup: impl FnOnce(BotSpec) -> BotSpec) -> Self {
        self.bot_named("bot", setup)
    }

    /// Adds the bot `id`, or changes it if it is there, set up by `setup`.
    pub fn bot_named(mut self, id: &str, setup: impl FnOnce(BotSpec) -> BotSpec) -> Self {
        match self.bots.iter().position(|b| b.id == id) {
            Some(i) => {
                let bot = self.bots.remove(i);
                self.bots.insert(i, setup(bot));
            }
            None => self.bots.push(setup(BotSpec::new(id))),
        }
        self
    }

    /// Leaves the bot `id` out of the config (its user stays registered).
    pub fn without(self, id: &str) -> Self {
        self.bot_named(id, |b| b.left_out())
    }

    /// Adds a human (a fresh user logged in with matrix-sdk).
    pub fn human(self) -> Self {
        self.humans(1)
    }

    /// Adds `n` humans.
    pub fn humans(mut self, n: usize) -> Self {
        self.humans.extend(std::iter::repeat_n(false, n));
        self
    }

    /// Adds a human whose client shares its room keys only with devices it verified (so an
    /// unverified bot cannot decrypt what it sends).
    pub fn wary_human(mut self) -> Self {
        self.humans.push(true);
        self
    }

    /// Starts the scenario on the shared Synapse; waits until every bot is syncing.
    pub async fn start(self) -> Result<Running> {
        self.start_on(Synapse::shared().await?).await
    }

    /// Starts the scenario on `synapse`; waits until every bot is syncing.
    pub async fn start_on(self, synapse: &Synapse) -> Result<Running> {
        let mut running = self.prepare_on(synapse).await?;
        running.start().await?;
        Ok(running)
    }

    /// Registers the users and writes the config on the shared Synapse, without starting.
    pub async fn prepare(self) -> Result<Running> {
        self.prepare_on(Synapse::shared().await?).await
    }

    /// Registers the users and writes the config on `synapse`, without starting.
    pub async fn prepare_on(self, synapse: &Synapse) -> Result<Running> {
        let mut bots = BTreeMap::new();
        let mut tokens = BTreeMap::new();
        for spec in &self.bots {
            let (user_id, password) = match &spec.user {
                Some(user) => user.clone(),
                None => synapse.fresh_user(&spec.id).await?,
            };
            if spec.access_token {
                let (token, _device) = synapse.login_token(&user_id, &password).await?;
                tokens.insert(spec.id.clone(), token);
            }
            bots.insert(spec.id.clone(), Bot { user_id, password });
        }
        let mut humans = Vec::new();
        for &wary in &self.humans {
            let (id, password) = synapse.fresh_user("human").await?;
            humans.push(Human::login_with(synapse.url(), &id, &password, wary).await?);
        }
        let admin = if self.admin {
            Some(format!("127.0.0.1:{}", free_port()?))
        } else {
            None
        };
        let mut running = Running {
            fleet: FleetProcess::new("")?,
            humans,
            bots,
            tokens,
            admin,
            homeserver: synapse.url().to_owned(),
            scenario: self,
        };
        running.fleet.rewrite_config(&running.config())?;
        for (key, value) in &running.scenario.env {
            running.fleet.set_env(key, value);
        }
        Ok(running)
    }
}

impl BotSpec {
    fn new(id: &str) -> Self {
        Self {
            id: id.to_owned(),
            user: None,
            homeserver: None,
            access_token: false,
            backend: "echo".to_owned(),
            keys: Vec::new(),
            tables: Vec::new(),
            in_config: true,
            wait: true,
        }
    }

    /// Answers with the backend `llm` (see [`Scenario::llm`]).
    pub fn llm(self) -> Self {
        self.backend("llm")
    }

    /// Answers with the backend `name`.
    pub fn backend(mut self, name: &str) -> Self {
        self.backend = name.to_owned();
        self
    }

    /// Anyone may DM it.
    pub fn open_dms(self) -> Self {
        self.key("dm_policy = \"open\"")
    }

    /// It talks in any room it is invited to, when mentioned.
    pub fn mentioned_in_rooms(self) -> Self {
        self.key("room_policy = \"open\"\nmention_mode = \"mention\"")
    }

    /// It answers everyone everywhere (DMs and rooms, every message).
    pub fn open(self) -> Self {
        self.key("dm_policy = \"open\"\nroom_policy = \"open\"\nmention_mode = \"always\"")
    }

    /// Adds raw TOML lines to its account table; `{human0}`, `{human1}`, … stand for the
    /// humans' user ids (quoted).
    pub fn key(mut self, lines: &str) -> Self {
        self.keys.push(lines.to_owned());
        self
    }

    /// Adds the table `[accounts.<id>.<name>]` with `body` (overrides); `{human0}`, … as in
    /// [`BotSpec::key`].
    pub fn table(mut self, name: &str, body: &str) -> Self {
        self.tables.push((name.to_owned(), body.to_owned()));
        self
    }

    /// Uses `user` (id, password) instead of a fresh one.
    pub fn user(mut self, user: &(String, String)) -> Self {
        self.user = Some(user.clone());
        self
    }

    /// Talks to the homeserver at `url` (a proxy in front of it).
    pub fn via(mut self, url: &str) -> Self {
        self.homeserver = Some(url.to_owned());
        self
    }

    /// Logs in with an access token (made for it) and no user id: whoami finds it.
    pub fn access_token(mut self) -> Self {
        self.access_token = true;
        self
    }

    /// Starting it is not waited for (it is expected to fail, or to be started later).
    pub fn not_awaited(mut self) -> Self {
        self.wait = false;
        self
    }

    fn left_out(mut self) -> Self {
        self.in_config = false;
        self
    }

    fn back_in(mut self) -> Self {
        self.in_config = true;
        self
    }
}

impl Running {
    /// The bot `id`.
    ///
    /// # Panics
    /// If the scenario has no such bot (a mistake in the test itself).
    pub fn bot(&self, id: &str) -> &Bot {
        match self.bots.get(id) {
            Some(bot) => bot,
            None => panic!("the scenario has no bot {id:?}"),
        }
    }

    /// The first human.
    ///
    /// # Panics
    /// If the scenario has no human (a mistake in the test itself).
    pub fn human(&self) -> &Human {
        match self.humans.first() {
            Some(human) => human,
            None => panic!("the scenario has no human"),
        }
    }

    /// The admin API's base URL.
    ///
    /// # Panics
    /// If the scenario has no admin API (a mistake in the test itself).
    pub fn api(&self) -> String {
        match &self.admin {
            Some(bind) => format!("http://{bind}"),
            None => panic!("the scenario has no admin API: call Scenario::admin"),
        }
    }

    /// The Prometheus text of the admin API's `/metrics`.
    pub async fn metrics(&self) -> Result<String> {
        Ok(reqwest::Client::new()
            .get(format!("{}/metrics", self.api()))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?)
    }

    /// The homeserver's URL.
    pub fn homeserver(&self) -> &str {
        &self.homeserver
    }

    /// Starts the fleet; waits until every bot that is waited for is syncing.
    pub async fn start(&mut self) -> Result<()> {
        self.fleet.start().await?;
        self.wait_syncing().await
    }

    /// Waits until every bot in the config that is waited for is syncing.
    pub async fn wait_syncing(&self) -> Result<()> {
        for spec in self.scenario.bots.iter().filter(|b| b.in_config && b.wait) {
            let syncing = self
                .fleet
                .wait_state(&spec.id, "syncing", START_TIMEOUT)
                .await;
            syncing.with_context(|| format!("the fleet's log:\n{}", self.fleet.all_logs()))?;
        }
        Ok(())
    }

    /// Rewrites the config file from the scenario as `change` leaves it; bots it adds get
    /// fresh users on the shared Synapse, bots left out come back with [`Scenario::bot_named`].
    pub async fn reconfigure(&mut self, change: impl FnOnce(Scenario) -> Scenario) -> Result<()> {
        let changed = change(self.scenario.clone());
        for spec in &changed.bots {
            if self.bots.contains_key(&spec.id) {
                continue;
            }
            let user = match &spec.user {
                Some(user) => user.clone(),
                None => Synapse::shared().await?.fresh_user(&spec.id).await?,
            };
            let (user_id, password) = user;
            self.bots.insert(spec.id.clone(), Bot { user_id, password });
        }
        self.scenario = changed;
        self.fleet.rewrite_config(&self.config())
    }

    /// The config text the scenario makes (without the data dir, which the fleet adds).
    pub fn config(&self) -> String {
        let mut text = String::new();
        for top in &self.scenario.top {
            text.push_str(top);
            text.push_str("\n\n");
        }
        if let Some(bind) = &self.admin {
            text.push_str(&format!(
                "[admin]\nbind = {bind:?}\ntoken = {ADMIN_TOKEN:?}\n\n"
            ));
        }
        for (name, body) in &self.scenario.backends {
            text.push_str(&format!("[backends.{name}]\n{body}\n\n"));
        }
        for spec in self.scenario.bots.iter().filter(|b| b.in_config) {
            text.push_str(&self.account_table(spec));
        }
        text
    }

    fn account_table(&self, spec: &BotSpec) -> String {
        let id = &spec.id;
        let homeserver = spec.homeserver.as_deref().unwrap_or(&self.homeserver);
        let mut table = format!("[accounts.{id}]\nhomeserver = {homeserver:?}\n");
        match (self.tokens.get(id), self.bots.get(id)) {
            (Some(token), _) => table.push_str(&format!("access_token = {token:?}\n")),
            (None, Some(bot)) => table.push_str(&format!(
                "user_id = {:?}\npassword = {:?}\n",
                bot.user_id, bot.password
            )),
            (None, None) => {}
        }
        table.push_str(&format!("backend = {:?}\n", spec.backend));
        for keys in &spec.keys {
            table.push_str(&self.with_humans(keys));
            table.push('\n');
        }
        for (name, body) in &spec.tables {
            let (name, body) = (self.with_humans(name), self.with_humans(body));
            table.push_str(&format!("\n[accounts.{id}.{name}]\n{body}\n"));
        }
        table.push('\n');
        table
    }

    /// `text` with `{human0}`, `{human1}`, … replaced by the humans' quoted user ids.
    fn with_humans(&self, text: &str) -> String {
        self.humans
            .iter()
            .enumerate()
            .fold(text.to_owned(), |text, (i, human)| {
                text.replace(
                    &format!("{{human{i}}}"),
                    &format!("{:?}", human.user_id.as_str()),
                )
            })
    }
}

impl Bot {
    /// The user id, as `&str`.
    pub fn id(&self) -> &str {
        &self.user_id
    }

    /// `(user id, password)`.
    pub fn credentials(&self) -> (String, String) {
        (self.user_id.clone(), self.password.clone())
    }
}

impl Scenario {
    /// Puts the bot `id`, left out earlier, back into the config.
    pub fn with(self, id: &str) -> Self {
        self.bot_named(id, BotSpec::back_in)
    }
}
