"""Writes evals/sets/scorer_pairs.jsonl and interview_docs.json: hand-written graded pairs (run from the repo root).

The heldout pairs were written before the scorer was tuned; the dev pairs were used while tuning.
"""

import json

JOB_BE = "Senior Backend Engineer\nWe run a payments API in Python and PostgreSQL on Kubernetes.\n- Design and run reliable services\n- Improve latency and database performance\n- Mentor engineers and lead incident reviews\nRequirements: Python, PostgreSQL, Kubernetes, observability."
RES_BE = "Maria Lopez. Backend engineer at Shopwise (2019-2024): rebuilt the checkout service in Python/FastAPI; cut p95 latency from 900 ms to 250 ms; moved Postgres reads to replicas; led 12 incident reviews; mentored 3 juniors."
JOB_DA = "Data Analyst\n- Build dashboards for the sales team\n- Analyse churn and retention\n- Work with SQL, dbt and Tableau\nRequirements: SQL, statistics, stakeholder communication."
RES_DA = "Tom Becker. Analyst at Freshbox (2020-2024): built the churn dashboard in Tableau used by 40 sales reps; wrote dbt models; found that late deliveries drove 30% of cancellations."
JOB_PM = "Product Manager, Mobile\n- Own the roadmap for the mobile app\n- Run discovery with customers\n- Align engineering, design and marketing\nRequirements: product management, analytics, communication."
RES_PM = "Aisha Khan. PM at TravelNow (2018-2024): launched offline mode for the app; grew weekly active users from 80k to 130k; ran 25 customer interviews per quarter."
JOB_SUP = "Customer Support Team Lead\n- Lead a team of 10 agents\n- Improve first response time and satisfaction\n- Build the knowledge base\nRequirements: leadership, Zendesk, coaching."
RES_SUP = "Jonas Weber. Support lead at Homely (2019-2024): managed 8 agents; introduced macros in Zendesk; CSAT rose from 82% to 91%."

Q = lambda text, type_, skill: {"text": text, "type": type_, "difficulty": "medium", "skill": skill}

pairs = []


def add(split, category, q, job, resume, better, worse):
    pairs.append(
        {
            "id": f"{category}-{split}-{sum(1 for p in pairs if p['category'] == category and p['split'] == split) + 1}",
            "category": category,
            "split": split,
            "question": q,
            "job_description": job,
            "resume": resume,
            "better": better,
            "worse": worse,
        }
    )


# ---------------- heldout (written first, before any tuning) ----------------
add(
    "heldout",
    "easy",
    Q("Tell me about a time you improved the performance of a slow service.", "behavioral", "performance"),
    JOB_BE,
    RES_BE,
    "At Shopwise our checkout service had a p95 latency of 900 ms during sales. I was responsible for fixing it before Black Friday. I profiled the endpoints, found that three queries ran on every request, added an index and moved the reads to a Postgres replica, and cached the tax tables. As a result p95 latency dropped to 250 ms and checkout errors fell by 40%.",
    "I usually try to make things faster. It is important to care about performance.",
)
add(
    "heldout",
    "easy",
    Q("How have you used SQL to answer a business question?", "technical", "SQL"),
    JOB_DA,
    RES_DA,
    "At Freshbox the sales team wanted to know why customers cancelled. I wrote SQL joining orders, deliveries and cancellations, grouped by delivery delay, and built a dbt model for it. It showed that late deliveries drove about 30% of cancellations, so operations changed the courier for two regions and cancellations fell by 12% the next quarter.",
    "I know SQL well. I have used it a lot in many jobs and it is a useful tool.",
)
add(
    "heldout",
    "easy",
    Q("Describe a time you had to align several teams on a roadmap.", "behavioral", "roadmap"),
    JOB_PM,
    RES_PM,
    "When I owned the TravelNow app roadmap, engineering wanted to rebuild the backend while marketing wanted new features. I ran a workshop with both, showed interview data from 25 customers, and we agreed to ship offline mode first. We launched it in one quarter and weekly active users grew from 80k to 130k.",
    "I talk to everyone and try to make them agree. Usually it works out fine in the end.",
)
add(
    "heldout",
    "easy",
    Q("Tell me about a time you coached a struggling team member.", "behavioral", "coaching"),
    JOB_SUP,
    RES_SUP,
    "At Homely one agent had the lowest CSAT on the team, around 70%. I listened to ten of her calls with her, we agreed on two habits to change, and I set up weekly fifteen-minute reviews. After six weeks her CSAT rose to 88% and she later trained new hires.",
    "I am a good coach. I help people when they need it and I am patient.",
)
add(
    "heldout",
    "filler",
    Q("How would you reduce the latency of a database-heavy API?", "technical", "latency"),
    JOB_BE,
    RES_BE,
    "First I would measure: p95 per endpoint and the slowest queries from pg_stat_statements. Then fix the top offenders: missing indexes, N+1 queries, and reads that can go to a replica. At Shopwise that took checkout from 900 ms to 250 ms p95.",
    "Reducing the latency of a database-heavy API is something that is very important, because latency matters and the database matters and the API matters. When you think about latency in a database-heavy API, you have to think about the latency, and the database, and the API, and how they all work together to reduce latency. I think reducing latency is really about reducing the latency of the database-heavy API in the right way, and that is what I would do, because reducing latency is important for any API that is database-heavy.",
)
add(
    "heldout",
    "filler",
    Q("How do you decide which dashboard metrics matter to the sales team?", "technical", "dashboards"),
    JOB_DA,
    RES_DA,
    "I start from the decisions the reps make each week, such as who to call. At Freshbox that meant renewal date, order frequency and late deliveries; I dropped twelve vanity charts, and the 40 reps opened the dashboard daily instead of weekly.",
    "Deciding which dashboard metrics matter to the sales team is a question about metrics and dashboards and the sales team. The metrics that matter are the metrics that matter to the sales team, and the dashboard should show the metrics that matter. So basically I decide which metrics matter by thinking about which metrics matter to the sales team and putting those metrics on the dashboard for the sales team, because that is what a dashboard is for, showing metrics that matter.",
)
add(
    "heldout",
    "filler",
    Q("Tell me about a time you improved customer satisfaction.", "behavioral", "customer satisfaction"),
    JOB_SUP,
    RES_SUP,
    "At Homely our CSAT was 82%. I read 200 low-rated tickets, found slow first replies were the main complaint, and introduced Zendesk macros and a morning triage rota. Within four months CSAT rose to 91% and first response time dropped from 9 hours to 2.",
    "Customer satisfaction is very important and improving customer satisfaction is something I care about a lot. There was a time when I improved customer satisfaction, and it was about customer satisfaction, and the customers were more satisfied after I improved customer satisfaction. I think the key to customer satisfaction is to always focus on customer satisfaction and to make sure that customers are satisfied, which improves customer satisfaction overall in the team and in the company and for the customers.",
)
add(
    "heldout",
    "off_topic",
    Q("Tell me about a time you handled a production incident.", "behavioral", "incident response"),
    JOB_BE,
    RES_BE,
    "During a sale at Shopwise the payment service started timing out. As incident lead I paged the database owner, we found a lock from a migration, rolled it back within 20 minutes, and I ran the review afterwards; we added a migration checklist and had no repeat.",
    "Last summer I did a long hiking trip in the Alps with three friends. We walked 154 kilometres in 9 days, climbed 6,200 metres and slept in 8 different huts. On day 4 a storm hit and we waited 11 hours in a hut before continuing. It was the best trip of my life and I learned a lot about myself.",
)
add(
    "heldout",
    "off_topic",
    Q("How did you measure the success of a feature you launched?", "behavioral", "analytics"),
    JOB_PM,
    RES_PM,
    "For offline mode at TravelNow we defined success before launch: share of trips opened without a connection and weekly active users. We tracked both in Amplitude; 35% of trips were opened offline in the first month and WAU grew from 80k to 130k over two quarters.",
    "I play in an amateur football league. Last season we won 14 of 20 games, scored 52 goals and finished 2nd out of 12 teams. I was the top scorer with 17 goals. We train twice a week and the team has 23 players.",
)
add(
    "heldout",
    "keyword_stuffed",
    Q("How have you used Kubernetes to run reliable services?", "technical", "Kubernetes"),
    JOB_BE,
    RES_BE,
    "At Shopwise I moved the checkout service to Kubernetes: readiness probes so bad pods never took traffic, a pod disruption budget, and autoscaling on request rate. During Black Friday we ran 4x normal load with no downtime.",
    "Kubernetes, Docker, Helm, pods, services, reliability, Python, PostgreSQL, observability, Prometheus, Grafana, scaling, microservices, CI/CD, cloud, AWS, SRE, latency.",
)
add(
    "heldout",
    "keyword_stuffed",
    Q("How do you analyse churn?", "technical", "churn"),
    JOB_DA,
    RES_DA,
    "I build a cohort table in SQL by signup month, then compare churned and retained customers on behaviour before they left. At Freshbox that showed late deliveries behind about 30% of cancellations.",
    "Churn, retention, SQL, dbt, Tableau, cohorts, statistics, regression, dashboards, KPIs, stakeholders, Python, pandas, analytics, insights, data.",
)
add(
    "heldout",
    "concise_good",
    Q("Tell me about a result you are proud of.", "behavioral", "impact"),
    JOB_SUP,
    RES_SUP,
    "At Homely I brought in Zendesk macros and a triage rota; first response time fell from nine hours to two, and CSAT rose from 82% to 91% in four months.",
    "There are many results that I am proud of in my career so far, and it is hard to choose just one because I have always worked hard and given my best to every team I was part of. I believe that results come from dedication, teamwork and a positive attitude, and I always try to bring those qualities to my work, which my managers have always appreciated.",
)
add(
    "heldout",
    "concise_good",
    Q("How did you make the checkout faster?", "technical", "latency"),
    JOB_BE,
    RES_BE,
    "profiled it with py-spy, added two indexes and moved reads to a postgres replica. p95 dropped from 900 ms to 250 ms.",
    "Making things faster is always a priority for me, and I approach it with a lot of care and attention. I think that speed is very important for users, and I always try to keep performance in mind when I work on any project, talking to my colleagues and making sure that we all agree on what needs to be done.",
)
add(
    "heldout",
    "concise_good",
    Q("Describe a time you grew a key metric.", "behavioral", "growth"),
    JOB_PM,
    RES_PM,
    "Shipping offline mode at TravelNow took weekly actives from eighty thousand to one hundred and thirty thousand in two quarters.",
    "Growing metrics is something I have done in several roles. I work closely with teams and I am always focused on the customer and on data. I believe in iterating quickly, learning from feedback and being data-driven, and this approach has always helped the products I worked on to grow and succeed.",
)

# ---------------- dev (used while tuning) ----------------
add(
    "dev",
    "easy",
    Q("Tell me about a time you mentored a junior engineer.", "behavioral", "mentoring"),
    JOB_BE,
    RES_BE,
    "At Shopwise I mentored a junior who struggled with code reviews. We paired twice a week for two months, I gave her ownership of the refund endpoint, and she shipped it with no incidents; a year later she was mentoring others.",
    "I like mentoring. It is good to help people grow.",
)
add(
    "dev",
    "easy",
    Q(
        "How do you explain a complex analysis to non-technical stakeholders?",
        "behavioral",
        "stakeholder communication",
    ),
    JOB_DA,
    RES_DA,
    "For the churn analysis at Freshbox I led with one chart: cancellations by delivery delay. I explained that late deliveries drove about 30% of cancellations and what operations could change. The head of sales approved a courier switch in the same meeting.",
    "I try to keep it simple and not too technical.",
)
add(
    "dev",
    "easy",
    Q("Tell me about a time you ran customer discovery.", "behavioral", "discovery"),
    JOB_PM,
    RES_PM,
    "At TravelNow I ran 25 interviews a quarter. In one round, 9 of 12 travellers said they lost access to tickets abroad, so I proposed offline mode, we tested a prototype with 40 users and then launched it.",
    "I talk to customers often and listen to what they say.",
)
add(
    "dev",
    "filler",
    Q("How do you improve the reliability of a service?", "technical", "reliability"),
    JOB_BE,
    RES_BE,
    "I set an error budget, add alerts on symptoms users feel, and fix the top causes from incident reviews. At Shopwise that cut pages by half in a quarter.",
    "Improving the reliability of a service is about making the service reliable, and reliability is very important for any service. To improve reliability you need to focus on reliability, and think about how the service can be more reliable, and then make it more reliable. A reliable service is a service that works reliably, and that is what improving reliability of a service means to me, so I would improve the reliability of the service by making it reliable.",
)
add(
    "dev",
    "filler",
    Q("Tell me about a time you resolved a conflict in your team.", "behavioral", "leadership"),
    JOB_SUP,
    RES_SUP,
    "Two agents at Homely argued over who took weekend shifts. I met each of them, set up a fair rota in Zendesk and we reviewed it after a month; complaints stopped and weekend CSAT stayed above 90%.",
    "Resolving conflict in a team is about resolving the conflict in the team. When there is a conflict in a team you have to resolve the conflict, and I think resolving conflict is something a team lead must do in a team, because conflict in a team is not good for the team. So I resolved the conflict in my team by resolving it, talking about the conflict and making sure the conflict in the team was resolved for the team.",
)
add(
    "dev",
    "off_topic",
    Q("Tell me about a time you improved a process.", "behavioral", "process improvement"),
    JOB_SUP,
    RES_SUP,
    "At Homely agents wrote every answer from scratch. I built 40 Zendesk macros from our most common tickets; handling time fell by 25% and new agents ramped up in two weeks instead of four.",
    "I love cooking. Last month I cooked a 7-course dinner for 12 guests; it took 16 hours and 3 trips to the market, and I used 4 kilograms of tomatoes for the sauce.",
)
add(
    "dev",
    "off_topic",
    Q("How did you use data to change a decision?", "behavioral", "analytics"),
    JOB_DA,
    RES_DA,
    "The Freshbox sales team planned a discount to stop churn. My analysis showed late deliveries, not price, drove 30% of cancellations, so the budget went to a better courier instead and churn fell.",
    "In 2019 I ran my first marathon in 3 hours 48 minutes. I trained for 16 weeks, ran 1,100 kilometres in total and lost 6 kilograms. The last 10 kilometres were very hard but I finished.",
)
add(
    "dev",
    "keyword_stuffed",
    Q("How have you used PostgreSQL in production?", "technical", "PostgreSQL"),
    JOB_BE,
    RES_BE,
    "At Shopwise Postgres held all orders. I added read replicas for the checkout reads, partitioned the events table by month and tuned autovacuum, which kept p95 under 250 ms at peak.",
    "PostgreSQL, SQL, indexes, replicas, partitioning, vacuum, performance, Python, Kubernetes, backups, replication, transactions, ACID, databases.",
)
add(
    "dev",
    "keyword_stuffed",
    Q("How do you prioritise the roadmap?", "technical", "roadmap"),
    JOB_PM,
    RES_PM,
    "I score candidate work on reach and evidence from interviews, then agree the top three with engineering and design each quarter. At TravelNow that put offline mode first.",
    "Roadmap, prioritisation, RICE, OKRs, stakeholders, discovery, analytics, agile, scrum, KPIs, customers, vision, strategy, alignment.",
)
add(
    "dev",
    "concise_good",
    Q("Tell me about a time you reduced costs.", "behavioral", "budgeting"),
    JOB_BE,
    RES_BE,
    "moved our batch jobs to spot instances and right-sized the postgres replicas; the monthly cloud bill fell by a third.",
    "Reducing costs is something I always keep in mind because it is important for every company. I try to be careful with resources and I always discuss costs with my team so that we can make good decisions together and avoid waste in our projects.",
)
add(
    "dev",
    "concise_good",
    Q("What was the impact of your dashboard?", "behavioral", "dashboards"),
    JOB_DA,
    RES_DA,
    "Forty reps used it daily; two of four regions switched courier after it, and cancellations dropped 12%.",
    "My dashboard had a big impact on the company and many people used it. It helped everyone make better decisions and understand the data better, and I received a lot of positive feedback from colleagues and managers about it.",
)

with open("evals/sets/scorer_pairs.jsonl", "w") as f:
    for p in pairs:
        f.write(json.dumps(p, ensure_ascii=False) + "\n")
docs = {
    "jobs": [
        {"id": "backend", "role": "Senior Backend Engineer", "text": JOB_BE},
        {"id": "analyst", "role": "Data Analyst", "text": JOB_DA},
        {"id": "pm", "role": "Product Manager, Mobile", "text": JOB_PM},
    ],
    "resumes": [
        {"id": "maria", "text": RES_BE},
        {"id": "tom", "text": RES_DA},
        {"id": "aisha", "text": RES_PM},
        {"id": "jonas", "text": RES_SUP},
    ],
}
json.dump(docs, open("evals/sets/interview_docs.json", "w"), indent=1, ensure_ascii=False)
print(len(pairs))
