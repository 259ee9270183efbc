//! The system a suite runs, built in one place: auth and task instances,
//! in-process or as child processes, the broker direct or behind a proxy
//! the test can cut or blackhole. Suites say what they need and nothing
//! else:
//!
//! ```ignore
//! let mut sys = System::builder(&mut env)
//!     .mode(ConsistencyMode::ReadThrough)
//!     .broker_via_proxy()
//!     .start()
//!     .await;
//! sys.broker().cut();
//! let (id, token) = sys.auth().member(signup("a@example.com")).await;
//! ```
use task::ConsistencyMode;

use crate::{
    apps::{TestAuth, TestTask, auth_settings, spawn_auth, spawn_task, task_settings},
    env::TestEnv,
    process::{ServiceProcess, auth_vars, service_exe, task_vars},
    proxy::TcpProxy,
};

/// Where task reads through to when the system has no auth: nothing
/// listens there, so read-through and key refreshes fail fast.
pub const NOWHERE: &str = "http://127.0.0.1:1";

/// A running system; see [`System::builder`].
pub struct System {
    /// In-process auth instances, in start order.
    pub auths: Vec<TestAuth>,
    /// In-process task instances, in start order.
    pub tasks: Vec<TestTask>,
    /// auth instances run as child processes ([`SystemBuilder::auth_processes`]).
    pub auth_processes: Vec<ServiceProcess>,
    /// task instances run as child processes ([`SystemBuilder::task_processes`]).
    pub task_processes: Vec<ServiceProcess>,
    broker: Option<std::sync::Arc<TcpProxy>>,
}

/// A change to an in-process instance's settings.
type Tune<S> = Box<dyn Fn(&mut S)>;

/// What to start; every choice has the default most suites want: one auth
/// and one task in-process, `not_ready`, the broker direct.
pub struct SystemBuilder<'e> {
    env: &'e mut TestEnv,
    mode: ConsistencyMode,
    broker_via_proxy: bool,
    auths: usize,
    tasks: usize,
    auth_processes: bool,
    task_processes: bool,
    tune_auth: Vec<Tune<auth::Settings>>,
    tune_task: Vec<Tune<task::Settings>>,
    task_vars: Vec<(String, String)>,
}

impl System {
    pub fn builder(env: &mut TestEnv) -> SystemBuilder<'_> {
        SystemBuilder {
            env,
            mode: ConsistencyMode::NotReady,
            broker_via_proxy: false,
            auths: 1,
            tasks: 1,
            auth_processes: false,
            task_processes: false,
            tune_auth: Vec::new(),
            tune_task: Vec::new(),
            task_vars: Vec::new(),
        }
    }

    /// The proxy every instance reaches the broker through.
    ///
    /// # Panics
    /// Unless built with [`SystemBuilder::broker_via_proxy`].
    pub fn broker(&self) -> &std::sync::Arc<TcpProxy> {
        self.broker
            .as_ref()
            .expect("built without .broker_via_proxy()")
    }

    /// The first in-process auth instance.
    pub fn auth(&mut self) -> &mut TestAuth {
        self.auths.first_mut().expect("an in-process auth")
    }

    /// The first in-process task instance.
    pub fn task(&self) -> &TestTask {
        self.tasks.first().expect("an in-process task")
    }
}

impl SystemBuilder<'_> {
    /// task's consistency mode (default `not_ready`).
    pub fn mode(mut self, mode: ConsistencyMode) -> Self {
        self.mode = mode;
        self
    }

    /// Every instance reaches RabbitMQ through one [`TcpProxy`], which the
    /// test cuts, restores or blackholes through [`System::broker`].
    pub fn broker_via_proxy(mut self) -> Self {
        self.broker_via_proxy = true;
        self
    }

    /// `n` instances of each service.
    pub fn instances(self, n: usize) -> Self {
        self.auth_instances(n).task_instances(n)
    }

    /// `n` auth instances; 0 runs task alone, reading through to
    /// [`NOWHERE`].
    pub fn auth_instances(mut self, n: usize) -> Self {
        self.auths = n;
        self
    }

    /// `n` task instances.
    pub fn task_instances(mut self, n: usize) -> Self {
        self.tasks = n;
        self
    }

    /// Runs auth as child processes, for faults that need a real process
    /// (SIGSTOP): they land in [`System::auth_processes`].
    pub fn auth_processes(mut self) -> Self {
        self.auth_processes = true;
        self
    }

    /// Runs task as child processes: they land in
    /// [`System::task_processes`].
    pub fn task_processes(mut self) -> Self {
        self.task_processes = true;
        self
    }

    /// Both services as child processes.
    pub fn processes(self) -> Self {
        self.auth_processes().task_processes()
    }

    /// Changes the settings of every in-process auth instance.
    pub fn tune_auth(mut self, f: impl Fn(&mut auth::Settings) + 'static) -> Self {
        self.tune_auth.push(Box::new(f));
        self
    }

    /// Changes the settings of every in-process task instance.
    pub fn tune_task(mut self, f: impl Fn(&mut task::Settings) + 'static) -> Self {
        self.tune_task.push(Box::new(f));
        self
    }

    /// Sets `TASK__{key}` on every task process.
    pub fn task_var(mut self, key: &str, value: &str) -> Self {
        self.task_vars.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Starts auth, then task reaching the first auth, each SERVING.
    pub async fn start(self) -> System {
        let broker = match self.broker_via_proxy {
            true => Some(std::sync::Arc::new(
                TcpProxy::start(&self.env.amqp_host()).await,
            )),
            false => None,
        };
        let amqp_url = match &broker {
            Some(proxy) => self.env.amqp_url_via(&proxy.host()),
            None => self.env.amqp_url(),
        };
        let mut system = System {
            auths: Vec::new(),
            tasks: Vec::new(),
            auth_processes: Vec::new(),
            task_processes: Vec::new(),
            broker,
        };

        let mut auth_url = None;
        for _ in 0..self.auths {
            if self.auth_processes {
                let mut vars = auth_vars(self.env);
                vars.push(("AMQP__URL".into(), amqp_url.clone()));
                let process = ServiceProcess::start(&service_exe(), "auth", &vars).await;
                auth_url.get_or_insert(process.url());
                system.auth_processes.push(process);
            } else {
                let mut settings = auth_settings(self.env);
                settings.amqp.url = amqp_url.clone().into();
                for tune in &self.tune_auth {
                    tune(&mut settings);
                }
                let auth = spawn_auth(settings).await;
                auth_url.get_or_insert(format!("http://{}", auth.app.addr));
                system.auths.push(auth);
            }
        }

        let auth_url = auth_url.unwrap_or_else(|| NOWHERE.to_owned());
        for _ in 0..self.tasks {
            if self.task_processes {
                let mut vars = task_vars(self.env, &auth_url);
                vars.push(("AMQP__URL".into(), amqp_url.clone()));
                let mode = match self.mode {
                    ConsistencyMode::ReadThrough => "read_through",
                    ConsistencyMode::NotReady => "not_ready",
                };
                vars.push(("CONSISTENCY__MODE".into(), mode.into()));
                vars.extend(self.task_vars.iter().cloned());
                system
                    .task_processes
                    .push(ServiceProcess::start(&service_exe(), "task", &vars).await);
            } else {
                let mut settings = task_settings(self.env, self.mode, &auth_url);
                settings.amqp.url = amqp_url.clone().into();
                for tune in &self.tune_task {
                    tune(&mut settings);
                }
                system.tasks.push(spawn_task(settings).await);
            }
        }
        system
    }
}

/// auth, then task in `mode` reaching that auth, both SERVING: the system
/// most suites test.
pub async fn spawn_system(env: &mut TestEnv, mode: ConsistencyMode) -> (TestAuth, TestTask) {
    let mut system = System::builder(env).mode(mode).start().await;
    (system.auths.remove(0), system.tasks.remove(0))
}

/// task in `mode` with no auth to reach (read-through and key refreshes
/// fail fast): for what task decides on its own.
pub async fn spawn_task_alone(env: &mut TestEnv, mode: ConsistencyMode) -> TestTask {
    let mut system = System::builder(env)
        .mode(mode)
        .auth_instances(0)
        .start()
        .await;
    system.tasks.remove(0)
}
