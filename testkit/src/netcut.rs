//! A TCP proxy the test controls: `cut` resets every open connection and refuses new ones until
//! `restore`, as a dropped network would; `retarget` sends new connections to another server
//! (one that replaced a stopped one).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;

pub struct Proxy {
    pub addr: SocketAddr,
    up: Arc<watch::Sender<bool>>,
    target: Arc<watch::Sender<SocketAddr>>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(watch::channel(true).0);
        let target = Arc::new(watch::channel(target).0);
        let (state, to) = (up.clone(), target.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !*state.borrow() {
                    continue; // dropped: the connection is refused as it arrives
                }
                let mut down = state.subscribe();
                let target = *to.borrow();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        // Dropped on the spot: nothing more gets through either way.
                        _ = down.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Proxy { addr, up, target }
    }

    pub fn cut(&self) {
        self.up.send_replace(false);
    }

    pub fn restore(&self) {
        self.up.send_replace(true);
    }

    /// New connections go to `target` from now on.
    pub fn retarget(&self, target: SocketAddr) {
        self.target.send_replace(target);
    }
}
